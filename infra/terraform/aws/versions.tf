terraform {
  required_version = ">= 1.11" # write-only attributes: the service credentials never enter the state

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.6"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7" # ephemeral random_password
    }
  }
}

provider "aws" {
  region = var.region

  # Every resource that takes tags gets these; instances, volumes and EFA interfaces launched by the worker
  # group get them from the launch template's tag specifications.
  default_tags {
    tags = local.tags
  }
}
