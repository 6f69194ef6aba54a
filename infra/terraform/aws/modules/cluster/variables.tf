variable "name" {
  description = "Cluster name, prefixing resource names."
  type        = string
}

variable "region" {
  description = "The region (the nodes' AWS_REGION, for S3 and SSM)."
  type        = string
}

variable "instance_type" {
  description = "GPU node instance type (a key of local.gpu_types)."
  type        = string
}

variable "node_count" {
  description = "Number of GPU nodes."
  type        = number
}

variable "head_instance_type" {
  description = "CPU instance type of the head node."
  type        = string
}

variable "subnet_id" {
  description = "The private subnet every node launches in."
  type        = string
}

variable "head_private_ip" {
  description = "The head node's fixed private address."
  type        = string
}

variable "security_group_id" {
  description = "The cluster's security group (every node, every EFA interface)."
  type        = string
}

variable "head_security_group_ids" {
  description = "The head node's security groups."
  type        = list(string)
}

variable "placement_group_name" {
  description = "The cluster placement group of the GPU nodes."
  type        = string
}

variable "bucket_name" {
  description = "The cluster's bucket."
  type        = string
}

variable "bucket_arn" {
  description = "The bucket's ARN: the only bucket the nodes' role may touch."
  type        = string
}

variable "kms_key_arn" {
  description = "The bucket's KMS key."
  type        = string
}

variable "fsx_dns_name" {
  description = "FSx for Lustre DNS name, or null for no shared file system."
  type        = string
  default     = null
}

variable "fsx_mount_name" {
  description = "FSx for Lustre mount name, or null."
  type        = string
  default     = null
}

variable "work_dir" {
  description = "The pipeline's work root folder under /fsx."
  type        = string
}

variable "code_object_key" {
  description = "Key in the bucket of the project archive the nodes install."
  type        = string
}

variable "worker_volume_gib" {
  description = "Root volume size of each GPU node."
  type        = number
}

variable "capacity_reservation_id" {
  description = "Capacity reservation or block the GPU nodes launch into, or null."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for what the worker group launches (instances, volumes, network interfaces)."
  type        = map(string)
}
