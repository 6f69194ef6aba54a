variable "name" {
  description = "Cluster name, prefixing resource names."
  type        = string
}

variable "bucket_name" {
  description = "The S3 bucket to create."
  type        = string
}

variable "checkpoint_retention_days" {
  description = "Days a noncurrent version under checkpoint_prefix is kept before it expires."
  type        = number
}

variable "checkpoint_prefix" {
  description = "Key prefix of the training runs (FSx exports the work root's train/ folder there)."
  type        = string
}

variable "fsx_storage_capacity_gib" {
  description = "FSx for Lustre capacity in GiB; 0 creates none."
  type        = number
}

variable "fsx_throughput_per_tib" {
  description = "FSx for Lustre PERSISTENT_2 throughput in MB/s per TiB."
  type        = number
}

variable "subnet_id" {
  description = "Subnet of the file system (the nodes' subnet)."
  type        = string
}

variable "security_group_id" {
  description = "Security group of the file system (the nodes' group, which allows Lustre's ports among its members)."
  type        = string
}

variable "work_dir" {
  description = "The pipeline's work root folder: /fsx/WORK_DIR on FSx, linked to s3://bucket/WORK_DIR/."
  type        = string
}
