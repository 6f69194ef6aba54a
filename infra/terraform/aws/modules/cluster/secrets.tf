# The cluster services' credentials: Ray's authentication token, the MLflow server's admin password and the
# Prefect server's API password. Terraform generates them as ephemeral values and writes them write-only, so they
# are in Secrets Manager and nowhere else: not in Terraform's state, the user data or any pipeline config. Each
# node's bootstrap fetches, by ARN, the ones its role needs (its role may read only those).

locals {
  services = {
    ray-token    = "Ray's cluster authentication token (RAY_AUTH_MODE=token): every node and driver."
    mlflow-admin = "The MLflow server's admin password (its basic-auth app): the head and the training workers."
    prefect-auth = "The Prefect server's API password (auth string admin:PASSWORD): the head only."
  }
  worker_services = ["ray-token", "mlflow-admin"]
}

ephemeral "random_password" "service" {
  for_each = local.services
  length   = 40
  special  = false # it goes into HTTP basic auth and env files: letters and digits need no quoting
}

resource "aws_secretsmanager_secret" "service" {
  # checkov:skip=CKV2_AWS_57: rotating means restarting every service and node at once; bump secret_string_wo_version and follow infra/README.md
  for_each                = local.services
  name_prefix             = "${var.name}/${each.key}-"
  description             = each.value
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "service" {
  for_each                 = local.services
  secret_id                = aws_secretsmanager_secret.service[each.key].id
  secret_string_wo         = ephemeral.random_password.service[each.key].result
  secret_string_wo_version = 1 # bump it to write new values (then restart the services: infra/README.md)
}
