"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
% if imports:
${imports}
% endif

revision: str = "${up_revision}"
down_revision: str | None = ${'"%s"' % down_revision if isinstance(down_revision, str) else repr(down_revision)}
branch_labels: str | None = None
depends_on: str | None = None

# expand: only adds | backfill: only data, in batches | contract: drops, renames, SET NOT NULL
phase = "expand"
# Per-revision overrides of sigma_db's session timeouts (defaults: 5s and 15min):
# lock_timeout = "5s"
# statement_timeout = "15min"


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
