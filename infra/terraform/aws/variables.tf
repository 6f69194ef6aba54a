variable "name" {
  description = "Cluster name: prefixes every resource and tags it (neox-cluster = name)."
  type        = string
  default     = "neox"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region (one where the GPU instance type is offered, e.g. us-east-1 or us-west-2)."
  type        = string
  default     = "us-east-1"
}

variable "availability_zone" {
  description = "The one AZ the cluster lives in (a cluster placement group spans one AZ). Default: the first AZ of the region that offers instance_type."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "The VPC's address range; a /16 to /24. The head node takes the 10th address of the private subnet."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24, false)
    error_message = "vpc_cidr must be an IPv4 CIDR block between /16 and /24, e.g. 10.42.0.0/16."
  }
}

variable "instance_type" {
  description = "GPU worker instance type: p4d.24xlarge (8 x A100 40GB), p4de.24xlarge (8 x A100 80GB) or p5.48xlarge (8 x H100 80GB)."
  type        = string
  default     = "p4d.24xlarge"

  validation {
    condition     = contains(["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"], var.instance_type)
    error_message = "instance_type must be one of p4d.24xlarge, p4de.24xlarge, p5.48xlarge (the EFA GPU types this cluster knows)."
  }
}

variable "node_count" {
  description = "Number of GPU worker nodes (8 GPUs each). The GPT-NeoX-20B schedule was run on 12."
  type        = number
  default     = 1

  validation {
    condition     = var.node_count >= 1 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number of at least 1."
  }
}

variable "head_instance_type" {
  description = "CPU instance for the head node (Ray head, Prefect server and worker, MLflow server; flows run here)."
  type        = string
  default     = "m6i.4xlarge"
}

variable "bucket_name" {
  description = "S3 bucket for shards, stage outputs, checkpoints and MLflow artifacts. Default: <name>-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and dashes."
  }
}

variable "admin_cidr" {
  description = "Optional address range (a VPN or bastion reaching into the VPC) allowed SSH to the head node. Default null: SSM Session Manager only, no SSH port open anywhere."
  type        = string
  default     = null

  validation {
    condition     = var.admin_cidr == null || (can(cidrhost(var.admin_cidr, 0)) && !contains(["0.0.0.0/0", "::/0"], coalesce(var.admin_cidr, "-")))
    error_message = "admin_cidr must be a CIDR block narrower than the whole internet (e.g. 10.8.0.0/16 for a VPN), or null."
  }
}

variable "fsx_storage_capacity_gib" {
  description = "FSx for Lustre capacity linked to the bucket and mounted at /fsx on every node (the pipeline's work root). 0: no FSx."
  type        = number
  default     = 4800

  validation {
    condition     = contains([0, 1200], var.fsx_storage_capacity_gib) || (var.fsx_storage_capacity_gib > 0 && var.fsx_storage_capacity_gib % 2400 == 0)
    error_message = "fsx_storage_capacity_gib must be 0 (no FSx), 1200, or a multiple of 2400 (PERSISTENT_2)."
  }
}

variable "fsx_throughput_per_tib" {
  description = "FSx for Lustre PERSISTENT_2 throughput in MB/s per TiB of storage."
  type        = number
  default     = 250

  validation {
    condition     = contains([125, 250, 500, 1000], var.fsx_throughput_per_tib)
    error_message = "fsx_throughput_per_tib must be 125, 250, 500 or 1000."
  }
}

variable "checkpoint_retention_days" {
  description = "Days an overwritten or deleted object under neox-work/train/ (old checkpoints, which Ray Train prunes to num_to_keep) stays as a noncurrent version before it expires."
  type        = number
  default     = 7

  validation {
    condition     = var.checkpoint_retention_days >= 1
    error_message = "checkpoint_retention_days must be at least 1."
  }
}

variable "worker_volume_gib" {
  description = "Root volume of each GPU node (the project's venv, Ray's object spill, local checkpoint staging)."
  type        = number
  default     = 500

  validation {
    condition     = var.worker_volume_gib >= 200
    error_message = "worker_volume_gib must be at least 200 (the Deep Learning AMI alone takes ~100 GiB)."
  }
}

variable "capacity_reservation_id" {
  description = "Optional On-Demand Capacity Reservation or Capacity Block (cr-...) the GPU nodes launch into; p4d/p5 capacity is often only available this way."
  type        = string
  default     = null

  validation {
    condition     = var.capacity_reservation_id == null || can(regex("^cr-[0-9a-f]{8,17}$", var.capacity_reservation_id))
    error_message = "capacity_reservation_id must look like cr-0123456789abcdef0, or be null."
  }
}

variable "tags" {
  description = "Extra tags for every resource (cost centre, owner, ...)."
  type        = map(string)
  default     = {}
}
