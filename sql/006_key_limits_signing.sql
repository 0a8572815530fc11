-- ccgate schema, migration 006: per-key concurrency, request signing and
-- idempotency keys.
--
-- max_concurrent_requests caps a key's turns running at once (NULL: no
-- cap); queue_when_busy says whether the next one waits in ccgate-poold's
-- queue (1) or is refused with 429 at once (0).
--
-- require_signature makes the key's requests carry X-Ccgate-Timestamp and
-- X-Ccgate-Signature.  The signing secret is never stored: it is derived
-- (keyed BLAKE2b under the server's key_secret) from signing_salt, so a
-- dump of this database alone gives no signing secret.  A new salt, made
-- when signing is turned on and when the key is rotated, is a new secret.
ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS max_concurrent_requests INT UNSIGNED NULL
        COMMENT 'turns at once; NULL: unlimited' AFTER tokens_per_day,
    ADD COLUMN IF NOT EXISTS queue_when_busy TINYINT(1) NOT NULL DEFAULT 1
        COMMENT '1: wait in the pool queue at the cap; 0: 429 at once'
        AFTER max_concurrent_requests,
    ADD COLUMN IF NOT EXISTS require_signature TINYINT(1) NOT NULL DEFAULT 0
        AFTER allow_tools,
    ADD COLUMN IF NOT EXISTS signing_salt BINARY(16) NULL
        COMMENT 'derives the signing secret with key_secret; not a secret alone'
        AFTER require_signature,
    ADD COLUMN IF NOT EXISTS prev_signing_salt BINARY(16) NULL
        COMMENT 'the salt before a rotation, valid until prev_valid_until'
        AFTER signing_salt;

-- Signatures seen, per key, until their timestamp leaves the skew window:
-- inserting one that is here already is a replay, in every ccgate-fcgi
-- process at once.  ccgate-admin purge removes expired rows.
CREATE TABLE IF NOT EXISTS signature_nonces (
    key_id          VARCHAR(16)  NOT NULL,
    sig             BINARY(32)   NOT NULL,
    expires_at      DATETIME     NOT NULL,
    PRIMARY KEY (key_id, sig),
    KEY idx_signature_nonces_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Idempotency-Key answers, per API key.  request_sha256 is SHA-256 over the
-- method, the path and the body: the same key with another request is a
-- conflict.  A 'done' row without a body kept an answer larger than
-- idempotency_max_answer: a retry gets 409.  A 'running' row whose lease_until has passed belongs to a
-- process that died: a retry takes it over.  A 'done' row replays status,
-- content_type and body until expires_at; ccgate-admin purge removes it
-- after.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_id          VARCHAR(16)  NOT NULL,
    idem_key        VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_sha256  BINARY(32)   NOT NULL,
    state           ENUM('running','done') NOT NULL,
    request_id      VARCHAR(64)  NOT NULL
                    COMMENT 'the request that holds the claim (its owner)',
    conversation_id CHAR(36)     NULL
                    COMMENT 'the answer''s conversation: deleted with it',
    lease_until     DATETIME     NOT NULL,
    status          SMALLINT UNSIGNED NULL,
    content_type    VARCHAR(128) NULL,
    headers         VARCHAR(1024) NULL COMMENT 'the answer''s X-Ccgate- headers',
    body            MEDIUMBLOB   NULL,
    created_at      DATETIME     NOT NULL,
    expires_at      DATETIME     NOT NULL,
    PRIMARY KEY (key_id, idem_key),
    KEY idx_idempotency_expires (expires_at),
    KEY idx_idempotency_conversation (conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
