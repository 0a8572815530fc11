-- ccgate: the read-only role for analysts.  Not a migration: creating
-- roles needs a privilege the service's database user does not have, so a
-- database administrator runs this once, after `ccgate-admin migrate`:
--
--   mariadb ccgate < /usr/share/ccgate/sql/roles.sql
--   CREATE USER 'ana'@'%' IDENTIFIED BY '...';
--   GRANT ccgate_analyst TO 'ana'@'%';
--   SET DEFAULT ROLE ccgate_analyst FOR 'ana'@'%';
--
-- Analysts read usage, conversations' metadata and the audit log through
-- the views; they never see key hashes, admin password hashes or message
-- contents.
CREATE ROLE IF NOT EXISTS ccgate_analyst;
GRANT SELECT ON ccgate.v_key_usage_daily TO ccgate_analyst;
GRANT SELECT ON ccgate.v_key_quota_status TO ccgate_analyst;
GRANT SELECT ON ccgate.v_recent_errors TO ccgate_analyst;
GRANT SELECT ON ccgate.v_tenant_conversations TO ccgate_analyst;
GRANT SELECT ON ccgate.usage_logs TO ccgate_analyst;
GRANT SELECT ON ccgate.audit_log TO ccgate_analyst;
GRANT SELECT (id, name, tenant, status, created_at, expires_at,
    last_used_at, requests_per_minute, requests_per_day, tokens_per_day,
    models, max_tokens, allow_streaming, allow_tools, metadata,
    max_concurrent_requests, queue_when_busy, require_signature)
    ON ccgate.api_keys TO ccgate_analyst;
