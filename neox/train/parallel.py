"""How a run's workers share the model: tensor-parallel groups of `model_parallel_size` consecutive ranks, pipeline
stages of whole groups (`pipeline.py`), a model replica's stages consecutive too, and data-parallel groups of the
ranks holding the same slice of the same stage. Ray Train numbers a node's workers consecutively, so a tensor-
parallel group, and a whole replica where it fits (tensor 2 x pipeline 4 on an 8-GPU node), shares a node: their
all-reduces and activations stay on NVLink, and only the data-parallel gradient traffic crosses nodes. The layout
is checked against the model before any worker starts (`config.check_layout`). `ModelParallel` holds a worker's
process groups and answers the Megatron-style `mpu` questions DeepSpeed asks (its data-parallel group for
gradients and ZeRO, the model-parallel group for the gradient norm and the checkpoint's `mp_rank` files); with
pipeline stages DeepSpeed's own grid answers them, built on the same numbering (`pipeline.topology`)."""

from __future__ import annotations

import torch.distributed as dist


class ModelParallel:
    """This rank's place in the layout and its tensor- and data-parallel process groups (every rank creates every
    group, in the same order, as torch.distributed requires), and the `mpu` interface DeepSpeed reads them through.
    rank = (data * pipe_size + pipe) * tensor_size + tensor: the tensor rank fastest, then the stage, so a replica
    is pipe_size x tensor_size consecutive ranks."""

    def __init__(self, tensor_size: int, pipe_size: int = 1):
        world, rank = dist.get_world_size(), dist.get_rank()
        self.tensor_size, self.pipe_size = tensor_size, pipe_size
        self.data_size = world // (tensor_size * pipe_size)
        self.tensor_rank = rank % tensor_size
        self.pipe_rank = rank // tensor_size % pipe_size
        self.data_rank = rank // (tensor_size * pipe_size)
        for start in range(0, world, tensor_size):
            group = dist.new_group(list(range(start, start + tensor_size)))
            if start == rank - self.tensor_rank:
                self.tensor_group = group
        for pipe in range(pipe_size):
            for tensor in range(tensor_size):
                ranks = [self.rank_of(pipe, data, tensor) for data in range(self.data_size)]
                group = dist.new_group(ranks)
                if rank in ranks:
                    self.data_group, self.data_ranks = group, ranks

    def rank_of(self, pipe: int, data: int, tensor: int) -> int:
        return (data * self.pipe_size + pipe) * self.tensor_size + tensor

    def get_model_parallel_rank(self) -> int:
        return self.tensor_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tensor_size

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.tensor_group

    def get_data_parallel_rank(self) -> int:
        return self.data_rank

    def get_data_parallel_world_size(self) -> int:
        return self.data_size

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.data_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.data_ranks

    # the newer names DeepSpeed tries first
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group
