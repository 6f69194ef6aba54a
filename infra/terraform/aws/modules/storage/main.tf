# The bucket everything durable lives in (shards, stage outputs via FSx, checkpoints, MLflow artifacts), its KMS
# key, and optionally an FSx for Lustre file system linked to it, which is the pipeline's shared work root.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is the key itself; the account statement is AWS's default, which lets IAM grant use
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is the key itself; CloudWatch Logs is held to this account's log groups by condition
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is the key itself (key policies take no other resource)
  # The account administers the key through IAM (the nodes' role gets use of it there).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the VPC flow log group with it.
  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "neox cluster ${var.name}: bucket, file system and log encryption"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket per cluster; use CloudTrail S3 data events for object-level audit
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage of multi-TB checkpoints that the pipeline can recompute
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the pipeline reads manifests, not notifications
  bucket = var.bucket_name
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true # one data key per bucket rather than per object: KMS calls stay cheap at millions of shards
  }
}

# Ray Train deletes checkpoints beyond num_to_keep (and FSx exports the deletion); with versioning they would stay
# as noncurrent versions (a GPT-NeoX-20B checkpoint is ~270 GB), so they expire after checkpoint_retention_days.
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "expire-old-checkpoint-versions"
    status = "Enabled"

    filter {
      prefix = var.checkpoint_prefix
    }

    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_retention_days
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyPlainHTTP"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# FSx for Lustre linked to the work root's prefix only: what the pipeline writes under /fsx/WORK_DIR is exported to
# s3://bucket/WORK_DIR/ (and objects put there appear under it). Not the whole bucket: every node can write /fsx,
# and the code archive (code/) and MLflow's artifacts (mlflow/) must stay writable by the head node alone.
resource "aws_fsx_lustre_file_system" "this" {
  count = var.fsx_storage_capacity_gib > 0 ? 1 : 0

  storage_capacity            = var.fsx_storage_capacity_gib
  deployment_type             = "PERSISTENT_2"
  per_unit_storage_throughput = var.fsx_throughput_per_tib
  subnet_ids                  = [var.subnet_id]
  security_group_ids          = [var.security_group_id]
  kms_key_id                  = aws_kms_key.this.arn
  data_compression_type       = "LZ4"
  file_system_type_version    = "2.15"

  tags = { Name = var.name }
}

resource "aws_fsx_data_repository_association" "this" {
  count = var.fsx_storage_capacity_gib > 0 ? 1 : 0

  file_system_id                   = aws_fsx_lustre_file_system.this[0].id
  data_repository_path             = "s3://${aws_s3_bucket.this.id}/${var.work_dir}/"
  file_system_path                 = "/${var.work_dir}"
  batch_import_meta_data_on_create = true

  s3 {
    auto_import_policy {
      events = ["NEW", "CHANGED", "DELETED"]
    }
    auto_export_policy {
      events = ["NEW", "CHANGED", "DELETED"]
    }
  }
}
