# A GPU cluster for neox-pipeline: one VPC with a private subnet in one AZ, an S3 bucket (and optionally FSx for
# Lustre on it), a CPU head node running the Ray head, Prefect and MLflow, and GPU nodes with EFA joining Ray.
# infra/README.md walks through apply, pointing a pipeline config at the cluster, and teardown.

data "aws_caller_identity" "current" {}

# The AZs of the region that offer the GPU type; the cluster goes in the first unless availability_zone says.
data "aws_ec2_instance_type_offerings" "gpu" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }

  lifecycle {
    postcondition {
      condition     = var.availability_zone != null || length(self.locations) > 0
      error_message = "No availability zone of this region offers the instance type; choose another region (or instance_type)."
    }
  }
}

locals {
  tags = merge(var.tags, {
    "neox-cluster" = var.name
    "managed-by"   = "terraform"
    "project"      = "neox-pipeline"
  })
  availability_zone = var.availability_zone != null ? var.availability_zone : sort(data.aws_ec2_instance_type_offerings.gpu.locations)[0]
  bucket_name       = coalesce(var.bucket_name, "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}")
  repository        = abspath("${path.root}/../../..")
  work_dir          = "neox-work" # the pipeline's work root under /fsx and the bucket; training runs in its train/
}

# The project as it is in this checkout (what `terraform apply` ran from), for the nodes to install from its lock.
data "archive_file" "project" {
  type        = "zip"
  source_dir  = local.repository
  output_path = "${path.root}/.terraform/neox-pipeline.zip"
  excludes    = [
    ".git/**", ".venv/**", ".venv-checkov/**", ".whl/**", "work/**", "mlflow.db", "mlruns/**", "**/__pycache__/**",
    "infra/terraform/aws/.terraform/**", "infra/terraform/aws/*.tfstate*", "infra/terraform/aws/*.tfvars",
  ]
}

module "storage" {
  source = "./modules/storage"

  name                      = var.name
  bucket_name               = local.bucket_name
  checkpoint_retention_days = var.checkpoint_retention_days
  checkpoint_prefix         = "${local.work_dir}/train/"
  work_dir                  = local.work_dir
  fsx_storage_capacity_gib  = var.fsx_storage_capacity_gib
  fsx_throughput_per_tib    = var.fsx_throughput_per_tib
  subnet_id                 = module.network.private_subnet_id
  security_group_id         = module.network.cluster_security_group_id
}

module "network" {
  source = "./modules/network"

  name              = var.name
  region            = var.region
  vpc_cidr          = var.vpc_cidr
  availability_zone = local.availability_zone
  admin_cidr        = var.admin_cidr
  kms_key_arn       = module.storage.kms_key_arn
}

resource "aws_s3_object" "project" {
  bucket      = module.storage.bucket_name
  key         = "code/neox-pipeline.zip"
  source      = data.archive_file.project.output_path
  source_hash = data.archive_file.project.output_base64sha256 # encrypted by the bucket's default (SSE-KMS)
}

module "cluster" {
  source = "./modules/cluster"

  name                    = var.name
  region                  = var.region
  instance_type           = var.instance_type
  node_count              = var.node_count
  head_instance_type      = var.head_instance_type
  subnet_id               = module.network.private_subnet_id
  head_private_ip         = module.network.head_private_ip
  security_group_id       = module.network.cluster_security_group_id
  head_security_group_ids = module.network.head_security_group_ids
  placement_group_name    = module.network.placement_group_name
  bucket_name             = module.storage.bucket_name
  bucket_arn              = module.storage.bucket_arn
  kms_key_arn             = module.storage.kms_key_arn
  fsx_dns_name            = module.storage.fsx_dns_name
  fsx_mount_name          = module.storage.fsx_mount_name
  work_dir                = local.work_dir
  code_object_key         = aws_s3_object.project.key
  worker_volume_gib       = var.worker_volume_gib
  capacity_reservation_id = var.capacity_reservation_id
  tags                    = local.tags
}
