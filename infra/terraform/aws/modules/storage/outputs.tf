output "bucket_name" {
  description = "The cluster's bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "The bucket's ARN, for the nodes' IAM policy."
  value       = aws_s3_bucket.this.arn
}

output "kms_key_arn" {
  description = "The key encrypting the bucket, the file system and the flow logs."
  value       = aws_kms_key.this.arn
}

output "fsx_dns_name" {
  description = "The file system's DNS name, or null without FSx."
  value       = one(aws_fsx_lustre_file_system.this[*].dns_name)
}

output "fsx_mount_name" {
  description = "The file system's Lustre mount name, or null without FSx."
  value       = one(aws_fsx_lustre_file_system.this[*].mount_name)
}
