-- ccgate schema, migration 005: a client's own X-Request-Id, kept apart
-- from ccgate's.  request_id is always ccgate's (nginx's $request_id), so
-- no client can choose or repeat it; the id a client sent, if it was 1 to
-- 128 visible ASCII characters, is kept here for the client's
-- correlation, and never trusted.
ALTER TABLE usage_logs
    ADD COLUMN IF NOT EXISTS client_request_id VARCHAR(128) NULL
        COMMENT 'the client''s X-Request-Id, if usable; never ccgate''s id'
        AFTER request_id;
CREATE INDEX IF NOT EXISTS idx_usage_client_request
    ON usage_logs (client_request_id);
