"""A failure notification: a Prefect automation that POSTs to a webhook (Slack, Teams, any HTTP endpoint) when a
flow run fails on the Prefect server, the Monday `scheduled-retrain` included.

    PREFECT_API_URL=http://HEAD:4200/api python -m flows.notify https://hooks.example/...

It saves the URL as the Webhook block `neox-failure-webhook` (the URL is kept as a secret) and (re)creates the
automation `neox: a flow run failed`; running it again with another URL replaces both.
"""

from __future__ import annotations

import sys

from prefect.automations import Automation
from prefect.blocks.webhook import Webhook
from prefect.events.actions import CallWebhook
from prefect.events.schemas.automations import EventTrigger, Posture

BLOCK = "neox-failure-webhook"
AUTOMATION = "neox: a flow run failed"
# rendered by Prefect for the failed run: the JSON a Slack incoming webhook (and most others) takes
PAYLOAD = (
    '{"text": "neox-pipeline: flow run {{ flow_run.name }} of {{ flow.name }} failed: '
    '{{ flow_run.state.message | replace(\'"\', \'\') }}", "flow_run_id": "{{ flow_run.id }}"}'
)


def install(url: str) -> str:
    """Save the webhook and (re)create the automation; returns the automation's id."""
    block_id = Webhook(url=url).save(BLOCK, overwrite=True)
    remove_earlier()
    automation = Automation(
        name=AUTOMATION,
        description="POST to the neox-failure-webhook block when a flow run fails",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            expect={"prefect.flow-run.Failed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    ).create()
    return str(automation.id)


def remove_earlier() -> None:
    """Delete the automations an earlier install made (one, unless two installs ran at once)."""
    while True:
        try:
            Automation.read(name=AUTOMATION).delete()
        except ValueError:  # Prefect's "no automation with that name"
            return


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].startswith(("http://", "https://")):
        sys.exit("usage: python -m flows.notify WEBHOOK_URL   (an http(s) URL; PREFECT_API_URL names the server)")
    print(f"automation {install(sys.argv[1])}: a failed flow run POSTs to the {BLOCK} block")


if __name__ == "__main__":
    main()
