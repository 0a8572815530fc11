-- ccgate schema, migration 010: what one API key's Idempotency-Key answers
-- hold.  Each kept answer's size is on its row (body_bytes, 0 when none is
-- kept), so the answers a key keeps can be summed from an index without
-- reading their bodies; ccgate-fcgi keeps no more than
-- idempotency_key_bytes of them per key (a hostile key without request
-- limits could otherwise fill the database for idempotency_window_s).
ALTER TABLE idempotency_keys
    ADD COLUMN IF NOT EXISTS body_bytes INT UNSIGNED NOT NULL DEFAULT 0
    COMMENT 'the kept answer''s size (0: none kept)',
    ADD INDEX IF NOT EXISTS idx_idempotency_key_bytes
    (key_id, expires_at, body_bytes);
UPDATE idempotency_keys SET body_bytes = IFNULL(LENGTH(body), 0);
