"""`make demo` while the pipeline is being built: runs, for real, every stage that exists today, on the
embedded corpus, into `work/`, and says plainly what does not exist yet.

1. the sample corpus (Python's stdlib sources + pydoc topics) written as Pile-format shards into a local
   "mirror", then read back through the download stage over `file://` like a real mirror;
2. dedup (exact + MinHash LSH), tokenizer training, tokenization to GPT-NeoX `.bin/.idx`;
3. GPT-NeoX training samples (train/valid/test) over the tokenized data;
4. the tiny GPT-NeoX initialised (untrained), exported to Hugging Face format, reloaded by `transformers`,
   and checked for equal logits and equal greedy generations.

Rerunning reuses every finished stage (each is content-addressed and verified). Training, lm-eval, the
MLflow registry and the Prefect flows are not built yet; `flows/pretrain.py` replaces this module once they are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORK = Path("work")


def timed(label: str, timings: dict[str, float]):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"== {label}", flush=True)

        def __exit__(self, *exc):
            timings[label] = time.perf_counter() - self.start

    return _Timer()


def main() -> None:
    from neox.config import load_model_config
    from neox.data.dataset import build_split_datasets
    from neox.data.dedup import dedup_shards
    from neox.data.sample import build_sample_corpus
    from neox.data.sources import Source, download_sources
    from neox.data.tokenize import data_prefix, tokenize_shards
    from neox.data.tokenizer import load_tokenizer, tokenizer_stage
    from neox.ray_runtime import ensure_ray
    from neox.stage import read_manifest

    timings: dict[str, float] = {}
    with timed("sample corpus -> local mirror", timings):
        mirror = build_sample_corpus(WORK / "mirror", shards=4)
    with timed("download (file:// mirror, sha256-checked)", timings):
        downloaded = download_sources([Source(p.resolve().as_uri()) for p in mirror], WORK)
    with timed("start local Ray", timings):
        ensure_ray()
    with timed("dedup (exact + MinHash LSH)", timings):
        deduped = dedup_shards(downloaded, WORK)
    with timed("train tokenizer (byte-level BPE, 8192 tokens)", timings):
        tokenizer = tokenizer_stage(WORK, vocab_size=8192, input_dir=deduped)
    with timed("tokenize -> GPT-NeoX .bin/.idx", timings):
        tokenized = tokenize_shards(deduped, tokenizer, WORK)
    with timed("training samples (GPT2Dataset semantics)", timings):
        splits = build_split_datasets(data_prefix(tokenized), "969,30,1", {"train": 2000, "valid": 100, "test": 20},
                                      seq_length=128, seed=1234, cache_dir=WORK / "index-cache")

    dedup_stats, tokenize_stats = read_manifest(deduped)["stats"], read_manifest(tokenized)["stats"]
    print(f"   dedup: {dedup_stats['documents_in']} -> {dedup_stats['documents_out']} documents "
          f"({dedup_stats['exact_duplicates']} exact, {dedup_stats['near_duplicates']} near duplicates, "
          f"{len(dedup_stats['clusters'])} clusters)")
    print(f"   tokenize: {tokenize_stats['tokens']:,} tokens in {tokenize_stats['sequences']} sequences "
          f"({tokenize_stats['dtype']}, engine {tokenize_stats['engine']}) -> {data_prefix(tokenized)}.bin/.idx")
    print(f"   samples of 129 tokens: " + ", ".join(f"{name} {len(ds)}" for name, ds in splits.items()))

    with timed("tiny GPT-NeoX: init (untrained), export to Hugging Face, parity with transformers", timings):
        parity_ok = model_parity(load_model_config(REPO / "configs" / "model" / "tiny.yml", vocab_size=load_tokenizer(tokenizer).get_vocab_size())[0], tokenizer)

    print("\n   stage timings:")
    for label, seconds in timings.items():
        print(f"   {seconds:7.1f} s  {label}")
    print(f"   {sum(timings.values()):7.1f} s  total; outputs under {WORK}/ (rerun: finished stages are reused)")
    print("   Not built yet: DeepSpeed/Ray training, lm-eval, MLflow registry, Prefect flows.")
    if not parity_ok:
        sys.exit("parity check failed")


def model_parity(cfg, tokenizer: Path) -> bool:
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from neox.hf import export_hf
    from neox.model.generate import SamplingConfig, generate
    from neox.model.gpt_neox import GPTNeoX, count_parameters, init_weights
    from neox.model.weights import save_model

    tok = Tokenizer.from_file(str(tokenizer))
    model = init_weights(GPTNeoX(cfg), generator=torch.Generator().manual_seed(0)).eval()
    save_model(model, WORK / "tiny-init", tokenizer_file=tokenizer, overwrite=True)
    export_hf(WORK / "tiny-init", WORK / "tiny-init-hf", overwrite=True)
    hf_model = AutoModelForCausalLM.from_pretrained(WORK / "tiny-init-hf").eval()
    ids = torch.tensor([tok.encode("def main():\n    return").ids])
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids)).abs().max().item()
    ours = generate(model, ids, SamplingConfig(max_new_tokens=16))
    theirs = hf_model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    same = ours.tolist() == theirs.tolist()
    print(f"   {count_parameters(cfg):,} parameters; max |logit difference| vs transformers: {diff:.2e}; "
          f"greedy generations identical: {same}")
    print(f"   sample (untrained weights, so noise): {tok.decode(ours[0].tolist())!r}")
    return diff <= 1e-5 and same


if __name__ == "__main__":
    main()
