"""`make demo` while the pipeline is being built: runs, for real, every part that exists today.

1. parameter counts of every shipped model config (built on the meta device);
2. a byte-level BPE tokenizer trained on a slice of the Python standard library's sources;
3. the tiny model initialised (untrained), exported to Hugging Face format, reloaded by `transformers`,
   and checked for equal logits and equal greedy generations.

The data, training, evaluation, registry and Prefect stages are not built yet; this says so rather than
pretending. `flows/pretrain.py` replaces this module once they land.
"""

from __future__ import annotations

import sys
import sysconfig
import time
from pathlib import Path

import torch

from neox.config import load_model_config
from neox.hf import export_hf
from neox.model.gpt_neox import GPTNeoX, count_parameters, init_weights
from neox.model.generate import SamplingConfig, generate
from neox.model.weights import save_model

REPO = Path(__file__).resolve().parents[1]
WORK = Path("work") / "demo"


def train_demo_tokenizer(out: Path, vocab_size: int = 2048) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((p.read_text(errors="replace") for p in sources), trainer)
    tok.save(str(out))
    return out


def main() -> None:
    started = time.perf_counter()
    print("== 1. Parameter counts (20B tokenizer, 50277 tokens, GPT-NeoX vocabulary padding)")
    counts = {
        config.stem: count_parameters(load_model_config(config, vocab_size=50277)[0])
        for config in (REPO / "configs" / "model").glob("*.yml")
    }
    for name, count in sorted(counts.items(), key=lambda item: item[1]):
        print(f"   {name:12s} {count:>16,}")

    WORK.mkdir(parents=True, exist_ok=True)
    print("== 2. Tokenizer: byte-level BPE trained on 80 stdlib modules")
    tokenizer = train_demo_tokenizer(WORK / "tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    print(f"   {tok.get_vocab_size()} tokens -> {tokenizer}")

    print("== 3. Tiny GPT-NeoX: init (untrained), export to Hugging Face, reload with transformers")
    cfg, _ = load_model_config(REPO / "configs" / "model" / "tiny.yml", vocab_size=tok.get_vocab_size())
    model = init_weights(GPTNeoX(cfg), generator=torch.Generator().manual_seed(0)).eval()
    save_model(model, WORK / "tiny-init", tokenizer_file=tokenizer, overwrite=True)
    export_hf(WORK / "tiny-init", WORK / "tiny-init-hf", overwrite=True)
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(WORK / "tiny-init-hf").eval()
    ids = torch.tensor([tok.encode("def main():\n    return").ids])
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids)).abs().max().item()
    ours = generate(model, ids, SamplingConfig(max_new_tokens=16))
    theirs = hf_model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    print(f"   {count_parameters(cfg):,} parameters; max |logit difference| vs transformers: {diff:.2e}")
    print(f"   greedy generations identical: {ours.tolist() == theirs.tolist()}")
    print(f"   sample (untrained weights, so noise): {tok.decode(ours[0].tolist())!r}")

    print(f"== done in {time.perf_counter() - started:.1f}s; outputs under {WORK}/")
    print("   Not built yet: data stages, DeepSpeed/Ray training, lm-eval, MLflow registry, Prefect flows.")
    if diff > 1e-5 or ours.tolist() != theirs.tolist():
        sys.exit("parity check failed")


if __name__ == "__main__":
    main()
