"""LoRA: only the adapters train, and the merged model is a plain GPT-NeoX that transformers loads with the
adapted logits."""

import pytest
import torch

from neox.errors import ConfigError
from neox.model.checkpoint import save_model
from neox.model.hf import export_hf
from neox.pipeline.configfile import parse
from neox.train.config import TrainConfig, check_layout
from neox.train.engine import micro_batch_loss, parameter_groups
from neox.train.lora import LoraConfig, merged, with_lora
from tests.conftest import tiny_config, tiny_model


def test_only_the_adapters_train():
    model = with_lora(tiny_model(), LoraConfig(r=4, target_modules=("query_key_value", "dense_4h_to_h")))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == {"query_key_value", "dense_4h_to_h"}
    optimized = [p for group in parameter_groups(model, 0.01) for p in group["params"]]
    assert len(optimized) == len(trainable)  # the frozen weights hold no optimizer state


def test_the_fused_loss_reaches_the_model_through_peft_and_trains_the_adapters_as_the_full_loss_does():
    model = with_lora(tiny_model(), LoraConfig(r=4, alpha=8.0))
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(0))
    found = {}
    for kernel in ("full", "chunked"):
        model.zero_grad()
        loss = micro_batch_loss(model, kernel, ids[:, :-1], ids[:, 1:])
        loss.backward()
        found[kernel] = loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(found["chunked"][0], found["full"][0])
    assert found["chunked"][1].keys() == found["full"][1].keys()
    for name, grad in found["full"][1].items():
        torch.testing.assert_close(found["chunked"][1][name], grad, rtol=1e-4, atol=1e-7)


def test_the_merged_export_loads_in_transformers_with_the_adapted_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    base = tiny_model(seed=1)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        before = base(ids)
    adapted_model = with_lora(base, LoraConfig(r=4, alpha=8.0))
    with torch.no_grad():
        for name, param in adapted_model.named_parameters():
            if ".lora_B." in name:  # peft starts B at zero (no change); a trained adapter is not
                param.normal_(std=0.05)
        adapted = adapted_model(ids)
    plain = merged(adapted_model)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    export_hf(save_model(plain, tmp_path / "model"), tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        exported = hf(ids).logits
    assert (adapted - before).abs().max() > 1e-2  # the adapters changed the model
    torch.testing.assert_close(exported, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [{"model_parallel_size": 2}, {"pipe_parallel_size": 2}, {"zero_stage": 3}])
def test_lora_is_refused_with_model_parallelism_and_zero_3(layout):
    cfg = parse(TrainConfig, {"model": ("m.yml",), "num_workers": 2, "lora": {}, **layout})
    with pytest.raises(ConfigError, match="train.lora"):
        check_layout(cfg, tiny_config())


def test_an_unknown_target_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="target_modules"):
        parse(TrainConfig, {"model": ("m.yml",), "lora": {"target_modules": ["q_proj"]}}, "train")
