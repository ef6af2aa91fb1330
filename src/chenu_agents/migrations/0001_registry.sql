-- The lifecycle registry: agents, their versions with a lifecycle state, and the audit trail.
-- States come from data/lifecycle.yaml: chenu_agents.registry fills lifecycle_states from it after
-- migrating, so the foreign keys below hold the registry to the one state machine.

CREATE TABLE lifecycle_states (
    name text PRIMARY KEY
);

CREATE TABLE agents (
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    agent text NOT NULL REFERENCES agents (name),
    version text NOT NULL CHECK (version ~ '^\d+\.\d+\.\d+([-+].*)?$'),
    digest text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    key_id text,
    bundle text,
    capabilities jsonb,
    tools jsonb,
    state text NOT NULL REFERENCES lifecycle_states (name),
    registered_at timestamptz NOT NULL DEFAULT now(),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, version)
);

-- Append-only: no foreign key to versions, so a deleted version keeps its history.
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    agent text NOT NULL,
    version text,
    action text NOT NULL,
    from_state text REFERENCES lifecycle_states (name),
    to_state text REFERENCES lifecycle_states (name),
    reason text,
    run_id text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_agent_version_id ON audit (agent, version, id);

CREATE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on audit refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
