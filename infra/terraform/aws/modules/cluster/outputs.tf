output "head_instance_id" {
  description = "The head node, the target of SSM sessions and port forwarding."
  value       = aws_instance.head.id
}

output "ray_address" {
  description = "The Ray head's GCS address inside the VPC."
  value       = "${var.head_private_ip}:6379"
}

output "mlflow_tracking_uri" {
  description = "The MLflow server inside the VPC (training rank 0 logs to it from a GPU node)."
  value       = "http://${var.head_private_ip}:5000"
}

output "prefect_api_url" {
  description = "The Prefect server's API inside the VPC."
  value       = "http://${var.head_private_ip}:4200/api"
}

output "work_root" {
  description = "The pipeline's shared work root on FSx, or null without FSx."
  value       = local.work_root
}

output "worker_group" {
  description = "The GPU nodes' Auto Scaling group."
  value       = aws_autoscaling_group.gpu.name
}

output "gpus_per_node" {
  description = "GPUs on each GPU node."
  value       = local.gpu.gpus
}

output "vcpus_per_node" {
  description = "vCPUs on each GPU node."
  value       = local.gpu.vcpus
}

output "efa_interfaces_per_node" {
  description = "EFA interfaces on each GPU node."
  value       = local.gpu.efa_interfaces
}

output "service_secrets" {
  description = "Secrets Manager ARNs of the services' credentials, by service."
  value       = { for name, secret in aws_secretsmanager_secret.service : name => secret.arn }
}
