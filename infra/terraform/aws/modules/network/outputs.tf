output "vpc_id" {
  description = "The cluster's VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_id" {
  description = "The subnet every node and the file system live in."
  value       = aws_subnet.private.id
}

output "head_private_ip" {
  description = "The head node's fixed address (the 10th of the private subnet), so workers know where Ray's head is before it exists."
  value       = cidrhost(local.private_cidr, 10)
}

output "cluster_security_group_id" {
  description = "The group every node and the file system are in."
  value       = aws_security_group.cluster.id
}

output "head_security_group_ids" {
  description = "The head node's groups: the cluster's, plus the admin SSH group when admin_cidr is set."
  value       = concat([aws_security_group.cluster.id], aws_security_group.admin[*].id)
}

output "placement_group_name" {
  description = "The cluster placement group of the GPU nodes."
  value       = aws_placement_group.gpu.name
}
