variable "name" {
  description = "Cluster name, prefixing resource names."
  type        = string
}

variable "region" {
  description = "The region, for the S3 endpoint's service name."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's address range; the private subnet takes its first half, the NAT subnet a /28 at its end."
  type        = string
}

variable "availability_zone" {
  description = "The one AZ of both subnets (a cluster placement group lives in one AZ)."
  type        = string
}

variable "admin_cidr" {
  description = "Address range allowed SSH to the head node, or null for SSM only."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key encrypting the VPC flow log group."
  type        = string
}
