# One VPC, a private subnet for every node (no public addresses), a small public subnet holding only the NAT
# gateway the nodes install packages through, an S3 gateway endpoint (shards and checkpoints never cross the NAT),
# the cluster placement group, and the security groups.

locals {
  nat_newbits  = 28 - tonumber(split("/", var.vpc_cidr)[1]) # a /28 for the NAT gateway, the last one of the VPC
  private_cidr = cidrsubnet(var.vpc_cidr, 1, 0)
  public_cidr  = cidrsubnet(var.vpc_cidr, local.nat_newbits, pow(2, local.nat_newbits) - 1)
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # SSM, FSx and the S3 endpoint resolve through the VPC's DNS

  tags = { Name = var.name }
}

# Nothing may use the default security group.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.private_cidr
  availability_zone       = var.availability_zone
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-private" }
}

resource "aws_subnet" "public" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.public_cidr
  availability_zone       = var.availability_zone
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-nat" }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_eip" "nat" {
  domain = "vpc"
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this.id
  }
}

resource "aws_route_table_association" "private" {
  subnet_id      = aws_subnet.private.id
  route_table_id = aws_route_table.private.id
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
}

# Every GPU node in one cluster placement group: EFA's bandwidth and latency assume the nodes share a spine.
resource "aws_placement_group" "gpu" {
  name     = "${var.name}-gpu"
  strategy = "cluster"
}

resource "aws_security_group" "cluster" {
  #checkov:skip=CKV2_AWS_5:Attached in modules/cluster (nodes, EFA interfaces) and modules/storage (FSx) through module outputs
  name        = "${var.name}-cluster"
  description = "neox cluster nodes: all traffic among themselves (EFA, NCCL, Ray, Lustre); out to HTTPS/HTTP only"
  vpc_id      = aws_vpc.this.id
}

# EFA needs all traffic allowed both ways within the group; Ray and NCCL use many dynamic ports.
resource "aws_vpc_security_group_ingress_rule" "cluster_self" {
  security_group_id            = aws_security_group.cluster.id
  description                  = "All traffic from the cluster's own nodes (EFA requires it)"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.cluster.id
}

resource "aws_vpc_security_group_egress_rule" "cluster_self" {
  security_group_id            = aws_security_group.cluster.id
  description                  = "All traffic to the cluster's own nodes (EFA requires it)"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.cluster.id
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.cluster.id
  description       = "HTTPS out through the NAT: PyPI, apt, SSM, AWS APIs, the Hugging Face hub"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.cluster.id
  description       = "HTTP out through the NAT: Ubuntu's apt mirrors are served over plain HTTP (packages are signed)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

# SSH to the head node only from a range the user names (a VPN into the VPC); by default there is none and the
# way in is SSM Session Manager, which needs no open port.
resource "aws_security_group" "admin" {
  #checkov:skip=CKV2_AWS_5:Attached to the head node in modules/cluster through the head_security_group_ids output
  count = var.admin_cidr == null ? 0 : 1

  name        = "${var.name}-admin"
  description = "SSH to the neox head node from the admin range only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "admin_ssh" {
  count = var.admin_cidr == null ? 0 : 1

  security_group_id = aws_security_group.admin[0].id
  description       = "SSH from the admin range"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.admin_cidr
}

# VPC flow logs, kept a year, encrypted with the cluster's key.
resource "aws_cloudwatch_log_group" "flow" {
  name              = "/neox/${var.name}/vpc-flow-logs"
  retention_in_days = 365
  kms_key_id        = var.kms_key_arn
}

data "aws_iam_policy_document" "flow_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "flow_write" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role" "flow" {
  name               = "${var.name}-vpc-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_assume.json
}

resource "aws_iam_role_policy" "flow" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow.id
  policy = data.aws_iam_policy_document.flow_write.json
}

resource "aws_flow_log" "this" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow.arn
  iam_role_arn    = aws_iam_role.flow.arn
}
