-- ccgate schema, migration 001: keys, conversations, messages, usage.
-- Applied by `ccgate-admin migrate`, which records it in schema_migrations.
-- All times are UTC (every connection sets time_zone = '+00:00').

CREATE TABLE IF NOT EXISTS api_keys (
    id              VARCHAR(16)  NOT NULL PRIMARY KEY
                    COMMENT 'public part of the key: ccg_<id>_<secret>',
    name            VARCHAR(100) NOT NULL,
    key_hash        BINARY(32)   NOT NULL
                    COMMENT 'keyed BLAKE2b of the whole key; the key is never stored',
    prev_key_hash   BINARY(32)   NULL COMMENT 'the secret before a rotation',
    prev_valid_until DATETIME    NULL COMMENT 'end of the rotation grace period',
    tenant          VARCHAR(64)  NOT NULL
                    COMMENT 'metadata.user_id, or key-<id> for a key of its own',
    status          ENUM('active','suspended','expired','revoked')
                    NOT NULL DEFAULT 'active',
    created_at      DATETIME     NOT NULL,
    expires_at      DATETIME     NULL,
    last_used_at    DATETIME     NULL,
    requests_per_minute INT UNSIGNED NULL,
    requests_per_day    INT UNSIGNED NULL,
    tokens_per_day      BIGINT UNSIGNED NULL,
    models          JSON NULL CHECK (models IS NULL OR JSON_VALID(models)),
    max_tokens      INT UNSIGNED NULL,
    allow_streaming TINYINT(1) NOT NULL DEFAULT 1,
    allow_tools     TINYINT(1) NOT NULL DEFAULT 0,
    metadata        JSON NULL CHECK (metadata IS NULL OR JSON_VALID(metadata)),
    KEY idx_api_keys_tenant (tenant)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS conversations (
    id              CHAR(36)     NOT NULL PRIMARY KEY,
    tenant          VARCHAR(64)  NOT NULL,
    key_id          VARCHAR(16)  NULL COMMENT 'the key that created it',
    title           VARCHAR(200) NULL,
    model           VARCHAR(128) NOT NULL,
    system_prompt   MEDIUMTEXT   NULL,
    cli_session_id  CHAR(36)     NULL COMMENT 'the CLI session holding its context',
    node            VARCHAR(64)  NULL COMMENT 'the node whose disk has the transcript',
    created_at      DATETIME(3)  NOT NULL,
    updated_at      DATETIME(3)  NOT NULL,
    deleted_at      DATETIME(3)  NULL,
    KEY idx_conversations_tenant (tenant, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS messages (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    conversation_id CHAR(36)     NOT NULL,
    role            ENUM('user','assistant') NOT NULL,
    content         MEDIUMTEXT   NOT NULL,
    request_id      VARCHAR(64)  NULL,
    input_tokens    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    output_tokens   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    cost_usd        DECIMAL(14,6) NOT NULL DEFAULT 0,
    created_at      DATETIME(3)  NOT NULL,
    KEY idx_messages_conversation (conversation_id, id),
    CONSTRAINT fk_messages_conversation FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS usage_logs (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id      VARCHAR(64)  NOT NULL,
    key_id          VARCHAR(16)  NULL COMMENT 'NULL when no valid key was shown',
    tenant          VARCHAR(64)  NULL,
    route           VARCHAR(128) NOT NULL COMMENT 'the route pattern',
    endpoint        VARCHAR(2048) NOT NULL COMMENT 'the path requested',
    method          VARCHAR(16)  NOT NULL,
    status_code     SMALLINT UNSIGNED NOT NULL,
    model           VARCHAR(128) NULL,
    input_tokens    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    output_tokens   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    cache_read_tokens     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT UNSIGNED NOT NULL DEFAULT 0,
    total_tokens    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    cost_usd        DECIMAL(14,6) NOT NULL DEFAULT 0,
    ttft_ms         INT          NULL COMMENT 'time to the first delta',
    duration_ms     INT UNSIGNED NOT NULL,
    error           VARCHAR(1024) NULL,
    node            VARCHAR(64)  NULL,
    created_at      DATETIME(3)  NOT NULL,
    KEY idx_usage_key_time (key_id, created_at),
    KEY idx_usage_time (created_at),
    KEY idx_usage_request (request_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
