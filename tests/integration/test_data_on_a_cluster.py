"""The data stages on a 2-node Ray cluster (two raylets on this machine, one CPU each, joined by address as a
cluster's nodes are) give byte for byte what they give on one local node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neox.data.dedup import dedup_shards
from neox.data.tokenize import tokenize_shards
from tests.conftest import REPO

ON_TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from neox.data.dedup import dedup_shards
from neox.data.tokenize import tokenize_shards

corpus, tokenizer, work = sys.argv[1:]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, configure_logging=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
assert len(nodes) == 2 and all(n["Resources"]["CPU"] == 1 for n in nodes), nodes
# two tasks at a time on two one-CPU nodes: both nodes work; 20 KB chunks make many tasks of each stage
deduped = dedup_shards(corpus, work, workers=2, ray_address=cluster.address, chunk_bytes=20_000).path
tokenized = tokenize_shards(deduped, tokenizer, work, workers=2, ray_address=cluster.address, chunk_bytes=20_000).path
print(json.dumps({"dedup": str(deduped), "tokenize": str(tokenized)}))
ray.shutdown()
cluster.shutdown()
"""


def files(output: Path) -> dict[str, bytes]:
    """A stage output's files but its manifest (which holds timings)."""
    return {p.name: p.read_bytes() for p in output.iterdir() if p.name != "manifest.json"}


def test_dedup_and_tokenize_on_two_nodes_give_the_one_node_outputs(tmp_path, ray_local, small_corpus, corpus_tokenizer):
    deduped = dedup_shards(small_corpus, tmp_path / "one-node").path
    tokenized = tokenize_shards(deduped, corpus_tokenizer, tmp_path / "one-node").path
    done = subprocess.run(
        [sys.executable, "-c", ON_TWO_NODES, str(small_corpus), str(corpus_tokenizer), str(tmp_path / "two-nodes")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout.strip().splitlines()[-1])
    for one_node, two_nodes in [(deduped, Path(two["dedup"])), (tokenized, Path(two["tokenize"]))]:
        assert files(two_nodes) == files(one_node) and two_nodes.name == one_node.name  # same files, same key
