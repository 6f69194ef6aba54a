"""infra/terraform/aws read as Terraform would read it (parsed with python-hcl2; there is no Terraform binary or cloud
here): names resolve across files and modules, GPU nodes get EFA and the placement group, the bucket is encrypted,
versioned and private, nothing listens to the internet, the nodes' role reaches only the cluster's bucket."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path

import hcl2
import pytest

from neox.pipeline.cluster import REQUIRED
from tests.conftest import REPO

ROOT = REPO / "infra" / "terraform" / "aws"
MODULE_DIRS = [ROOT, *sorted(p for p in (ROOT / "modules").iterdir() if p.is_dir())]
OUTPUTS_FIXTURE = Path(__file__).with_name("terraform-outputs.json")
OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


def unwrap(value):
    """HCL blocks parse as lists; a block given once reads better as the block itself."""
    if isinstance(value, list):
        items = [unwrap(v) for v in value]
        return items[0] if len(items) == 1 and isinstance(items[0], dict) else items
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


@cache
def module(path: Path) -> dict[str, dict]:
    """A module's blocks by kind, merged over its .tf files: variable/output/module/locals by name, resource/data
    by "TYPE.NAME", provider/terraform as parsed."""
    out: dict[str, dict] = {
        kind: {}
        for kind in ("variable", "output", "module", "locals", "resource", "data", "ephemeral", "provider", "terraform")
    }
    for tf in sorted(path.glob("*.tf")):
        with tf.open() as f:
            parsed = hcl2.load(f, serialization_options=OPTIONS)
        for kind, blocks in parsed.items():
            for block in map(unwrap, blocks):
                if kind in ("resource", "data", "ephemeral"):
                    for rtype, named in block.items():
                        out[kind].update({f"{rtype}.{name}": body for name, body in named.items()})
                else:
                    out[kind].update(block)
    return out


def expressions(value) -> list[str]:
    """The interpolated strings ("${...}") among a parsed block's values (keys are names, not expressions)."""
    if isinstance(value, dict):
        return [e for v in value.values() for e in expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    return [value] if isinstance(value, str) and "${" in value else []


def text_outside(path: Path, kinds: tuple[str, ...]) -> str:
    """The module's expressions as one text, leaving out blocks of the given kinds."""
    return "\n".join(expressions({kind: blocks for kind, blocks in module(path).items() if kind not in kinds}))


def resources(kind: str) -> dict[str, dict]:
    """Every resource of a type across the root and its modules, by "module/NAME"."""
    return {
        f"{path.name}/{key.split('.', 1)[1]}": body
        for path in MODULE_DIRS
        for key, body in module(path)["resource"].items()
        if key.split(".")[0] == kind
    }


@pytest.mark.parametrize("path", MODULE_DIRS, ids=lambda p: p.name)
def test_every_variable_declared_is_used_and_every_one_used_is_declared(path):
    declared = set(module(path)["variable"])
    used = set(re.findall(r"\bvar\.([A-Za-z0-9_]+)", text_outside(path, ("variable",))))
    assert used - declared == set(), "used but not declared"
    assert declared - used == set(), "declared but never used"
    for name, body in module(path)["variable"].items():
        assert body.get("description") and body.get("type"), f"variable {name} needs a description and a type"


@pytest.mark.parametrize("path", MODULE_DIRS, ids=lambda p: p.name)
def test_every_local_resource_and_data_source_referenced_exists(path):
    text = text_outside(path, ())
    blocks = module(path)
    assert set(re.findall(r"\blocal\.([A-Za-z0-9_]+)", text)) <= set(blocks["locals"])
    assert {f"{t}.{n}" for t, n in re.findall(r"\bdata\.([a-z0-9_]+)\.([A-Za-z0-9_]+)", text)} <= set(blocks["data"])
    referenced = {f"{t}.{n}" for t, n in re.findall(r"(?<![.\w])((?:aws|archive)_[a-z0-9_]+)\.([A-Za-z0-9_]+)", text)}
    assert referenced <= set(blocks["resource"]), "references to resources this module does not declare"


def test_module_calls_give_each_module_exactly_what_it_declares_and_use_only_its_outputs():
    root = module(ROOT)
    for name, call in root["module"].items():
        child = module((ROOT / call["source"]).resolve())
        inputs = set(call) - {"source", "depends_on", "providers", "count", "for_each"}
        assert inputs <= set(child["variable"]), (
            f"module {name} is given unknown inputs {inputs - set(child['variable'])}"
        )
        required = {v for v, body in child["variable"].items() if "default" not in body}
        assert required <= inputs, f"module {name} lacks required inputs {required - inputs}"
    text = text_outside(ROOT, ())
    for name, output in re.findall(r"\bmodule\.([a-z0-9_]+)\.([A-Za-z0-9_]+)", text):
        assert name in root["module"], f"no module {name}"
        assert output in module((ROOT / root["module"][name]["source"]).resolve())["output"], (
            f"module.{name} has no output {output}"
        )


def test_the_instance_type_list_is_the_clusters_known_gpu_types():
    condition = module(ROOT)["variable"]["instance_type"]["validation"]["condition"]
    validated = set(re.findall(r'\\"([a-z0-9]+\.[0-9]*xlarge)\\"', json.dumps(condition)))
    assert (
        validated
        == set(module(ROOT / "modules" / "cluster")["locals"]["gpu_types"])
        == {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"}
    )
    assert module(ROOT)["variable"]["instance_type"]["default"] == "p4d.24xlarge"


@pytest.mark.parametrize(
    "name, must_mention",
    [
        ("instance_type", "contains("),
        ("node_count", ">= 1"),
        ("vpc_cidr", "cidrhost("),
        ("admin_cidr", "0.0.0.0/0"),
        ("bucket_name", "regex("),
        ("name", "regex("),
    ],
)
def test_the_variables_a_mistake_is_costly_in_are_validated(name, must_mention):
    validation = module(ROOT)["variable"][name]["validation"]
    assert must_mention in validation["condition"] and validation["error_message"]


def test_gpu_nodes_have_efa_on_every_network_card_and_share_the_placement_group():
    (template,) = resources("aws_launch_template").values()
    interfaces = template["dynamic"][0]["network_interfaces"]
    assert interfaces["for_each"] == "${range(local.gpu.efa_interfaces)}"
    assert interfaces["content"]["interface_type"] == "efa"
    assert interfaces["content"]["network_card_index"] == "${network_interfaces.value}"
    assert template["placement"]["group_name"] == "${var.placement_group_name}"
    (group,) = resources("aws_autoscaling_group").values()
    assert group["placement_group"] == "${var.placement_group_name}"
    assert group["min_size"] == group["max_size"] == group["desired_capacity"] == "${var.node_count}"
    (placement,) = resources("aws_placement_group").values()
    assert placement["strategy"] == "cluster"
    assert module(ROOT)["module"]["cluster"]["placement_group_name"] == "${module.network.placement_group_name}"
    assert all(
        spec["efa_interfaces"] >= 4 for spec in module(ROOT / "modules" / "cluster")["locals"]["gpu_types"].values()
    )


def test_the_bucket_is_encrypted_versioned_private_and_expires_old_checkpoint_versions():
    (sse,) = resources("aws_s3_bucket_server_side_encryption_configuration").values()
    default = sse["rule"]["apply_server_side_encryption_by_default"]
    assert default["sse_algorithm"] == "aws:kms" and default["kms_master_key_id"] == "${aws_kms_key.this.arn}"
    (versioning,) = resources("aws_s3_bucket_versioning").values()
    assert versioning["versioning_configuration"]["status"] == "Enabled"
    (block,) = resources("aws_s3_bucket_public_access_block").values()
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    (lifecycle,) = resources("aws_s3_bucket_lifecycle_configuration").values()
    (checkpoints,) = [
        rule for rule in lifecycle["rule"] if rule.get("filter", {}).get("prefix") == "${var.checkpoint_prefix}"
    ]
    assert checkpoints["noncurrent_version_expiration"]["noncurrent_days"] == "${var.checkpoint_retention_days}"
    # the runs' prefix is where FSx exports the work root's train/ folder, which neox cluster config trains into
    assert module(ROOT)["module"]["storage"]["checkpoint_prefix"] == "${local.work_dir}/train/"
    assert (
        module(ROOT / "modules" / "cluster")["locals"]["work_root"]
        == '${var.fsx_dns_name == null ? null : "/fsx/${var.work_dir}"}'
    )

    (key,) = resources("aws_kms_key").values()
    assert key["enable_key_rotation"] is True
    (policy,) = [
        d for k, d in module(ROOT / "modules" / "storage")["data"].items() if k == "aws_iam_policy_document.bucket"
    ]
    assert (
        policy["statement"]["effect"] == "Deny"
        and policy["statement"]["condition"]["variable"] == "aws:SecureTransport"
    )


def test_nothing_is_reachable_from_the_internet():
    everything = "".join((path / "main.tf").read_text() for path in MODULE_DIRS)
    for kind in ("aws_vpc_security_group_ingress_rule", "aws_security_group_rule", "aws_security_group"):
        for name, body in resources(kind).items():
            rules = [body] if kind == "aws_vpc_security_group_ingress_rule" else body.get("ingress", [])
            if kind == "aws_security_group_rule" and body.get("type") != "ingress":
                continue
            for rule in rules if isinstance(rules, list) else [rules]:
                for cidr_key in ("cidr_ipv4", "cidr_ipv6", "cidr_blocks", "ipv6_cidr_blocks"):
                    assert "0.0.0.0/0" not in str(rule.get(cidr_key)) and "::/0" not in str(rule.get(cidr_key)), name
    ingress = resources("aws_vpc_security_group_ingress_rule")
    assert {n: r.get("cidr_ipv4") for n, r in ingress.items() if "cidr_ipv4" in r} == {
        "network/admin_ssh": "${var.admin_cidr}"
    }
    for name, rule in resources("aws_vpc_security_group_egress_rule").items():  # out to the world: web ports only
        assert rule.get("cidr_ipv4") != "0.0.0.0/0" or (rule["ip_protocol"], rule["from_port"]) in (
            ("tcp", 443),
            ("tcp", 80),
        ), name
    assert all(s["map_public_ip_on_launch"] is False for s in resources("aws_subnet").values())
    assert "associate_public_ip_address" not in everything
    assert module(ROOT)["variable"]["admin_cidr"]["default"] is None  # SSM only unless asked


CLUSTER = ROOT / "modules" / "cluster"


def test_head_and_gpu_nodes_have_roles_of_their_own_reaching_only_the_bucket_key_and_their_credentials():
    blocks = module(CLUSTER)
    roles = blocks["locals"]["roles"]
    assert set(roles) == {"head", "worker"}
    policy = blocks["data"]["aws_iam_policy_document.node"]
    assert policy["for_each"] == "${local.roles}"
    statements = {s["sid"]: s for s in policy["statement"]}
    for statement in statements.values():
        assert not any(a.endswith("*") for a in statement["actions"] if isinstance(a, str)), statement
    assert statements["ListTheBucket"]["resources"] == ["${var.bucket_arn}"]
    assert statements["ReadItsObjects"]["resources"] == ["${var.bucket_arn}/*"]
    assert statements["UseTheBucketKey"]["resources"] == ["${var.kms_key_arn}"]
    assert statements["WriteWhatTheRoleWrites"]["resources"] == "${each.value.writes}"
    assert statements["ReadItsServiceCredentials"]["actions"] == ["secretsmanager:GetSecretValue"]
    assert statements["ReadItsServiceCredentials"]["resources"] == "${each.value.secrets}"
    # the code archive every node installs from is writable by the head alone: GPU nodes write the work root only,
    # and FSx, which every node writes through, exports the work root only
    (association,) = resources("aws_fsx_data_repository_association").values()
    assert association["data_repository_path"] == "s3://${aws_s3_bucket.this.id}/${var.work_dir}/"
    assert association["file_system_path"] == "/${var.work_dir}"
    assert roles["head"]["writes"] == ["${var.bucket_arn}/*"]
    assert roles["worker"]["writes"] == ["${var.bucket_arn}/${var.work_dir}/*"]
    assert module(ROOT)["resource"]["aws_s3_object.project"]["key"] == "code/neox-pipeline.zip"
    assert not module(ROOT)["module"]["cluster"]["work_dir"].startswith("code")
    # GPU nodes read Ray's token and MLflow's password, not Prefect's
    assert "local.services" in roles["head"]["secrets"] and "local.worker_services" in roles["worker"]["secrets"]
    assert blocks["locals"]["worker_services"] == ["ray-token", "mlflow-admin"]
    attachments = resources("aws_iam_role_policy_attachment")
    assert [a["policy_arn"] for a in attachments.values()] == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    head, template = blocks["resource"]["aws_instance.head"], blocks["resource"]["aws_launch_template.gpu"]
    assert head["iam_instance_profile"] == '${aws_iam_instance_profile.node["head"].name}'
    assert template["iam_instance_profile"]["name"] == '${aws_iam_instance_profile.node["worker"].name}'
    for body in (head, template):  # instance metadata only with a session token
        assert body["metadata_options"]["http_tokens"] == "required"


def test_service_credentials_are_generated_into_secrets_manager_and_never_enter_the_state():
    blocks = module(CLUSTER)
    assert set(blocks["locals"]["services"]) == {"ray-token", "mlflow-admin", "prefect-auth"}
    password = blocks["ephemeral"]["random_password.service"]
    assert password["for_each"] == "${local.services}" and password["length"] >= 32
    secret = blocks["resource"]["aws_secretsmanager_secret.service"]
    assert secret["kms_key_id"] == "${var.kms_key_arn}" and secret["for_each"] == "${local.services}"
    version = blocks["resource"]["aws_secretsmanager_secret_version.service"]
    assert version["secret_string_wo"] == "${ephemeral.random_password.service[each.key].result}"
    assert "secret_string" not in version  # the write-only attribute: Terraform keeps no copy
    assert module(ROOT)["terraform"]["required_version"] == ">= 1.11"
    # the bootstrap gets ARNs, never values
    bootstrap = blocks["locals"]["bootstrap"]
    assert bootstrap["ray_token_secret"] == '${aws_secretsmanager_secret.service["ray-token"].arn}'
    assert bootstrap["mlflow_secret"] == '${aws_secretsmanager_secret.service["mlflow-admin"].arn}'
    assert bootstrap["prefect_secret"] == ""  # the head's user data alone gets Prefect's
    assert "prefect-auth" in json.dumps(blocks["resource"]["aws_instance.head"]["user_data"])


def test_every_resource_is_tagged():
    provider = module(ROOT)["provider"]["aws"]
    assert provider["default_tags"]["tags"] == "${local.tags}"
    assert "neox-cluster" in module(ROOT)["locals"]["tags"]
    (template,) = resources("aws_launch_template").values()  # what the group launches does not get default_tags
    tagged = template["dynamic"]
    specs = [d["tag_specifications"] for d in tagged if "tag_specifications" in d]
    assert specs and specs[0]["for_each"] == ["instance", "volume", "network-interface"]


def test_the_outputs_are_what_neox_cluster_config_reads():
    declared = set(module(ROOT)["output"])
    fixture = json.loads(OUTPUTS_FIXTURE.read_text())
    assert set(fixture) == declared  # the fixture is `terraform output -json` of exactly these outputs
    assert set(REQUIRED) <= declared
    for name, body in module(ROOT)["output"].items():
        assert body.get("description"), f"output {name} needs a description"


def render(template: str, values: dict[str, str]) -> str:
    """Terraform's template syntax as bootstrap.sh.tftpl uses it: ${name} and %{ if name == "x" ~} ... %{ else ~}
    ... %{ endif ~} (no nesting), with `~` trimming the newline after the directive."""

    def branch(match: re.Match) -> str:
        name, op, literal, then, otherwise = match.groups()
        holds = (values[name] == literal) == (op == "==")
        return then if holds else (otherwise or "")

    directive = re.compile(r'%\{ if (\w+) (==|!=) "([^"]*)" ~\}\n(.*?)(?:%\{ else ~\}\n(.*?))?%\{ endif ~\}\n', re.S)
    out = directive.sub(branch, template)
    assert "%{" not in out, "a template directive this renderer does not know"
    return re.sub(r"(?<!\$)\$\{([a-z_]+)\}", lambda m: values[m.group(1)], out)


@pytest.mark.parametrize(
    "role, fsx",
    [
        ("head", "fs-0123.fsx.us-east-1.amazonaws.com"),
        ("worker", "fs-0123.fsx.us-east-1.amazonaws.com"),
        ("worker", ""),
    ],
)
def test_the_bootstrap_script_renders_to_valid_bash_with_exactly_the_variables_terraform_passes(tmp_path, role, fsx):
    template = (ROOT / "modules" / "cluster" / "bootstrap.sh.tftpl").read_text()
    passed = set(module(ROOT / "modules" / "cluster")["locals"]["bootstrap"]) | {"role"}
    referenced = set(re.findall(r"(?<!\$)\$\{([a-z_]+)\}", template)) | set(re.findall(r"%\{ if (\w+)", template))
    assert referenced == passed
    values = {name: f"test-{name}" for name in passed} | {
        "role": role,
        "fsx_dns_name": fsx,
        "head_ip": "10.42.0.10",
        "project_dir": "/opt/neox-pipeline",
    }
    script = tmp_path / "bootstrap.sh"
    script.write_text(render(template, values))
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert ("ray start --head" in text) == (role == "head") and ("--address=10.42.0.10:6379" in text) == (
        role == "worker"
    )
    assert ("mount /fsx" in text) == bool(fsx) and "make -C" in text and "setup PYTHON=python3.11" in text


def test_no_secret_is_written_in_the_infrastructure_code():
    text = "\n".join(p.read_text() for p in (REPO / "infra").rglob("*") if p.is_file())
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"(secret_key|access_key|password)\s*=\s*\"", text, re.I)


def rendered_bootstrap(role: str) -> str:
    template = (CLUSTER / "bootstrap.sh.tftpl").read_text()
    values = {name: f"test-{name}" for name in module(CLUSTER)["locals"]["bootstrap"]} | {
        "role": role,
        "fsx_dns_name": "",
        "head_ip": "10.42.0.10",
        "ray_token_secret": "arn:ray",
        "mlflow_secret": "arn:mlflow",
        "prefect_secret": "arn:prefect" if role == "head" else "",
    }
    return render(template, values)


@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_service_listens_on_the_private_address_and_asks_for_credentials(role):
    script = rendered_bootstrap(role)
    assert "0.0.0.0" not in script and "127.0.0.1:" not in script.replace("PREFECT_UI_API_URL=http://127.0.0.1", "")
    assert "RAY_AUTH_MODE=token" in script and "RAY_AUTH_TOKEN_PATH=/etc/neox/ray-token" in script
    assert '--secret-id "$1"' in script and 'secret "arn:ray" > /etc/neox/ray-token' in script
    assert ('secret "arn:prefect"' in script) == (role == "head")  # a GPU node never holds Prefect's password
    assert script.count("EnvironmentFile=/etc/neox/credentials.env") == 1  # in the unit writer: every service
    assert "umask 077" in script  # the credential files are born private
    if role == "head":
        for service in ("--node-ip-address=10.42.0.10", "--dashboard-host=10.42.0.10", "mlflow server --app-name "):
            assert service in script
        assert "basic-auth --host 10.42.0.10" in script and "prefect server start --host 10.42.0.10" in script
        assert "--num-cpus=0" in script  # no task runs on the head, with the head's role
        assert "PREFECT_SERVER_API_AUTH_STRING=$prefect_auth" in script
        assert "EnvironmentFile=/var/lib/neox/mlflow-server.env" in script  # MLflow's CSRF key, made once
    # a credential is only ever echoed (a shell builtin) into a private file, never on a command line, which ps
    # shows to every user
    for line in script.splitlines():
        if "$mlflow_password" in line or "$prefect_auth" in line:
            assert line.strip().startswith(("echo ", "admin_password = ")), line


def mlflow_auth_config(script: str, password: str, state: Path) -> str:
    """The MLflow basic-auth config the head's bootstrap writes, as it would be on a head with this password."""
    (ini,) = re.findall(r"cat > /var/lib/neox/mlflow-auth.ini <<EOF\n(.*?)\nEOF\n", script, re.S)
    return ini.replace("$mlflow_password", password).replace("/var/lib/neox", str(state))
