# The head node (CPU: Ray head, Prefect server + worker, MLflow server; the flows run here) and the GPU nodes (an
# Auto Scaling group of node_count from a launch template with one EFA interface per network card, in the cluster
# placement group). Both install the project from the bucket's archive with `make setup` (the pinned lock) and
# start their services from the same bootstrap script.

locals {
  # What the pipeline needs to know of each GPU type: GPUs and vCPUs (training workers and their CPUs) and
  # network cards (one EFA interface each).
  gpu_types = {
    "p4d.24xlarge"  = { gpus = 8, vcpus = 96, efa_interfaces = 4 }
    "p4de.24xlarge" = { gpus = 8, vcpus = 96, efa_interfaces = 4 }
    "p5.48xlarge"   = { gpus = 8, vcpus = 192, efa_interfaces = 32 }
  }
  gpu         = local.gpu_types[var.instance_type]
  project_dir = "/opt/neox-pipeline"
  work_root   = var.fsx_dns_name == null ? null : "/fsx/${var.work_dir}"

  bootstrap = {
    region          = var.region
    bucket          = var.bucket_name
    code_object_key = var.code_object_key
    project_dir     = local.project_dir
    head_ip         = var.head_private_ip
    fsx_dns_name    = var.fsx_dns_name == null ? "" : var.fsx_dns_name # the script tests for ""
    fsx_mount_name  = var.fsx_mount_name == null ? "" : var.fsx_mount_name
    work_root       = local.work_root == null ? "" : local.work_root
    state_volume    = "" # the head's state volume id (without its dash), for its by-id device path
    # the service credentials by ARN (the values stay in Secrets Manager); the head alone gets Prefect's
    ray_token_secret = aws_secretsmanager_secret.service["ray-token"].arn
    mlflow_secret    = aws_secretsmanager_secret.service["mlflow-admin"].arn
    prefect_secret   = ""
  }
}

# The Deep Learning Base AMI: NVIDIA driver, CUDA, the EFA installer and aws-ofi-nccl, kept current by AWS.
data "aws_ami" "dlami" {
  most_recent = true
  owners      = ["amazon"]

  filter {
    name   = "name"
    values = ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

# --- IAM: one role for the head node, one for the GPU nodes. Both may use the cluster's bucket (and its key) and
# be reached through SSM, and read the service credentials their services need; nothing else. Only the head may
# write the bucket outside the work root, so a GPU node cannot rewrite the code archive every node installs from.

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

locals {
  object_writes = [
    "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
  ]
  roles = {
    head = {
      writes  = ["${var.bucket_arn}/*"]
      secrets = [for name in keys(local.services) : aws_secretsmanager_secret.service[name].arn]
    }
    worker = {
      writes  = ["${var.bucket_arn}/${var.work_dir}/*"] # a run's storage_path may be s3://BUCKET/neox-work/train
      secrets = [for name in local.worker_services : aws_secretsmanager_secret.service[name].arn]
    }
  }
}

data "aws_iam_policy_document" "node" {
  for_each = local.roles

  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "ReadItsObjects"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${var.bucket_arn}/*"]
  }

  statement {
    sid       = "WriteWhatTheRoleWrites"
    actions   = local.object_writes
    resources = each.value.writes
  }

  statement {
    sid       = "UseTheBucketKey"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "ReadItsServiceCredentials"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = each.value.secrets
  }
}

resource "aws_iam_role" "node" {
  for_each           = local.roles
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy" "node" {
  for_each = local.roles
  name     = "cluster-${each.key}"
  role     = aws_iam_role.node[each.key].id
  policy   = data.aws_iam_policy_document.node[each.key].json
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each   = local.roles
  role       = aws_iam_role.node[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  for_each = local.roles
  name     = "${var.name}-${each.key}"
  role     = aws_iam_role.node[each.key].name
}

# --- Head node

# Prefect's and MLflow's databases live on their own volume, so replacing the head node loses no run history.
resource "aws_ebs_volume" "head_state" {
  availability_zone = data.aws_subnet.this.availability_zone
  size              = 100
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.kms_key_arn

  tags = { Name = "${var.name}-head-state" }
}

data "aws_subnet" "this" {
  id = var.subnet_id
}

resource "aws_instance" "head" {
  ami                    = data.aws_ami.dlami.id
  instance_type          = var.head_instance_type
  subnet_id              = var.subnet_id
  private_ip             = var.head_private_ip
  vpc_security_group_ids = var.head_security_group_ids
  iam_instance_profile   = aws_iam_instance_profile.node["head"].name
  monitoring             = true
  ebs_optimized          = true
  user_data              = templatefile("${path.module}/bootstrap.sh.tftpl", merge(local.bootstrap, {
    role           = "head"
    state_volume   = replace(aws_ebs_volume.head_state.id, "-", "")
    prefect_secret = aws_secretsmanager_secret.service["prefect-auth"].arn
  }))

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # nothing on the nodes runs in containers that would need a second hop
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 200
    encrypted   = true
  }

  tags = { Name = "${var.name}-head" }

  # its bootstrap reads the service credentials at first boot: they and its role's policy must exist by then
  depends_on = [aws_secretsmanager_secret_version.service, aws_iam_role_policy.node]

  # A newer AMI or a changed bootstrap must not replace a head node with a running flow on it; update the code on
  # a live cluster with neox-update (infra/README.md), replace the head on purpose with -replace.
  lifecycle {
    ignore_changes = [ami, user_data]
  }
}

resource "aws_volume_attachment" "head_state" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.head_state.id
  instance_id = aws_instance.head.id
}

# --- GPU nodes

resource "aws_launch_template" "gpu" {
  name_prefix   = "${var.name}-gpu-"
  image_id      = data.aws_ami.dlami.id
  instance_type = var.instance_type
  user_data     = base64encode(templatefile("${path.module}/bootstrap.sh.tftpl", merge(local.bootstrap, { role = "worker" })))

  iam_instance_profile {
    name = aws_iam_instance_profile.node["worker"].name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # nothing on the nodes runs in containers that would need a second hop
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/sda1"
    ebs {
      volume_type           = "gp3"
      volume_size           = var.worker_volume_gib
      encrypted             = true
      delete_on_termination = true
    }
  }

  placement {
    group_name = var.placement_group_name
  }

  # One EFA interface per network card; the first is the node's primary interface.
  dynamic "network_interfaces" {
    for_each = range(local.gpu.efa_interfaces)
    content {
      network_card_index    = network_interfaces.value
      device_index          = network_interfaces.value == 0 ? 0 : 1
      interface_type        = "efa"
      security_groups       = [var.security_group_id]
      delete_on_termination = true
    }
  }

  dynamic "capacity_reservation_specification" {
    for_each = var.capacity_reservation_id == null ? [] : [var.capacity_reservation_id]
    content {
      capacity_reservation_target {
        capacity_reservation_id = capacity_reservation_specification.value
      }
    }
  }

  dynamic "tag_specifications" {
    for_each = ["instance", "volume", "network-interface"]
    content {
      resource_type = tag_specifications.value
      tags          = merge(var.tags, { Name = "${var.name}-gpu" })
    }
  }
}

# A fixed-size group: a node that fails its EC2 health check is replaced, joins Ray on boot, and a training run
# with max_failures > 0 resumes from its last checkpoint.
resource "aws_autoscaling_group" "gpu" {
  name                      = "${var.name}-gpu"
  min_size                  = var.node_count
  max_size                  = var.node_count
  desired_capacity          = var.node_count
  vpc_zone_identifier       = [var.subnet_id]
  placement_group           = var.placement_group_name
  health_check_type         = "EC2"
  wait_for_capacity_timeout = "30m" # GPU capacity can take a while; apply fails after this rather than hang

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-gpu" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false # the launch template tags what it launches
    }
  }

  depends_on = [aws_instance.head] # workers join the head's Ray; they retry until it is up, but need not wait long
}
