# `terraform output -json > cluster.json` and `neox cluster config cluster.json` turn these into a pipeline
# config's cluster part. The *_url outputs are for your browser, through SSM port forwarding (ssm_port_forward).

output "region" {
  description = "The cluster's region."
  value       = var.region
}

output "bucket" {
  description = "The cluster's bucket: pile/ for the Pile mirror, neox-work/ for what FSx exports of the work root (runs in neox-work/train/), mlflow/ for artifacts."
  value       = module.storage.bucket_name
}

output "work_root" {
  description = "The pipeline's work root on FSx for Lustre, training runs in its train/ (null without FSx)."
  value       = module.cluster.work_root
}

output "head_instance_id" {
  description = "The head node: `aws ssm start-session --target` it for a shell."
  value       = module.cluster.head_instance_id
}

output "ray_address" {
  description = "Ray's address inside the VPC (the pipeline config's data.ray_address and train.ray_address)."
  value       = module.cluster.ray_address
}

output "mlflow_tracking_uri" {
  description = "MLflow inside the VPC (the pipeline config's train.mlflow_tracking_uri)."
  value       = module.cluster.mlflow_tracking_uri
}

output "prefect_api_url" {
  description = "Prefect's API inside the VPC (PREFECT_API_URL on the head node)."
  value       = module.cluster.prefect_api_url
}

output "ssm_port_forward" {
  description = "Forward a head-node port to this machine (replace PORT: 5000 MLflow, 4200 Prefect, 8265 Ray dashboard)."
  # to the head's private address: the services listen there, not on the head's loopback
  value       = "aws ssm start-session --region ${var.region} --target ${module.cluster.head_instance_id} --document-name AWS-StartPortForwardingSessionToRemoteHost --parameters host=${module.network.head_private_ip},portNumber=PORT,localPortNumber=PORT"
}

output "service_secrets" {
  description = "Secrets Manager ARNs of the services' credentials (user admin): mlflow-admin for MLflow's login, prefect-auth for the Prefect UI and API (admin:PASSWORD), ray-token for Ray. Read one with aws secretsmanager get-secret-value --secret-id ARN."
  value       = module.cluster.service_secrets
}

output "mlflow_url" {
  description = "The MLflow UI, once port 5000 is forwarded."
  value       = "http://127.0.0.1:5000"
}

output "prefect_url" {
  description = "The Prefect UI, once port 4200 is forwarded."
  value       = "http://127.0.0.1:4200"
}

output "ray_dashboard_url" {
  description = "The Ray dashboard, once port 8265 is forwarded."
  value       = "http://127.0.0.1:8265"
}

output "instance_type" {
  description = "The GPU nodes' instance type."
  value       = var.instance_type
}

output "node_count" {
  description = "GPU nodes in the cluster."
  value       = var.node_count
}

output "gpus_per_node" {
  description = "GPUs per node (one training worker each)."
  value       = module.cluster.gpus_per_node
}

output "vcpus_per_node" {
  description = "vCPUs per GPU node."
  value       = module.cluster.vcpus_per_node
}

output "efa_interfaces_per_node" {
  description = "EFA interfaces per GPU node (NCCL runs over them when > 0)."
  value       = module.cluster.efa_interfaces_per_node
}

output "worker_group" {
  description = "The GPU nodes' Auto Scaling group (scale by changing node_count and applying)."
  value       = module.cluster.worker_group
}

output "update_command" {
  description = "Install the code `terraform apply` last uploaded (and its lock) on every node of the cluster."
  value       = "aws ssm send-command --region ${var.region} --targets Key=tag:neox-cluster,Values=${var.name} --document-name AWS-RunShellScript --comment neox-update --parameters commands=/usr/local/bin/neox-update"
}
