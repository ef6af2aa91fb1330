-- One release at a time per agent: a lease held by the run (release.yml, rollback.yml) that moves the
-- agent's traffic. chenu_agents.registry takes it atomically (INSERT ... ON CONFLICT, or over a lease
-- that has expired, or forced), renews it at each step, and frees it only for its holder. A run killed
-- before it frees its lease blocks the agent until expires_at at most.

CREATE TABLE release_locks (
    agent text PRIMARY KEY CHECK (agent ~ '^[a-z][a-z0-9_]*$'),
    holder text NOT NULL CHECK (holder <> ''),
    actor text NOT NULL,
    playbook text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CHECK (expires_at > renewed_at)
);
