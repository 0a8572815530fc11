-- ccgate schema, migration 004: administrators, their failed logins, the
-- audit log, and the views and procedures operators query by hand.
-- The read-only analysts' role is in sql/roles.sql: creating a role needs
-- a privilege the service's own database user does not have.

CREATE TABLE IF NOT EXISTS admin_users (
    id              INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username        VARCHAR(64)  NOT NULL,
    password_hash   VARCHAR(255) NOT NULL COMMENT 'Argon2id (crypto_pwhash_str)',
    status          ENUM('active','disabled') NOT NULL DEFAULT 'active',
    token_version   INT UNSIGNED NOT NULL DEFAULT 1
                    COMMENT 'raised by passwd and disable: older tokens stop working',
    created_at      DATETIME     NOT NULL,
    last_login_at   DATETIME     NULL,
    UNIQUE KEY uq_admin_users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Failed logins per user name and per client address, for slowing down
-- guessing; a success clears the user's row.
CREATE TABLE IF NOT EXISTS admin_login_failures (
    scope           ENUM('user','ip') NOT NULL,
    subject         VARCHAR(128) NOT NULL,
    failures        INT UNSIGNED NOT NULL DEFAULT 0,
    last_failure_at DATETIME(3)  NOT NULL,
    PRIMARY KEY (scope, subject)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every administrative change, written in the transaction of the change.
-- before_state and after_state never hold a secret or a key hash.
CREATE TABLE IF NOT EXISTS audit_log (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    actor           VARCHAR(100) NOT NULL
                    COMMENT 'admin:<name>, cli:<unix user>, or sql:<user>',
    source_ip       VARCHAR(64)  NULL,
    action          VARCHAR(64)  NOT NULL,
    object_type     VARCHAR(32)  NOT NULL,
    object_id       VARCHAR(64)  NOT NULL,
    before_state    JSON NULL CHECK (before_state IS NULL OR JSON_VALID(before_state)),
    after_state     JSON NULL CHECK (after_state IS NULL OR JSON_VALID(after_state)),
    created_at      DATETIME(3)  NOT NULL,
    KEY idx_audit_time (created_at),
    KEY idx_audit_object (object_type, object_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE INDEX IF NOT EXISTS idx_usage_status ON usage_logs (status_code, id);

-- Per key and UTC day: requests, errors, tokens, cost, mean duration.
CREATE OR REPLACE VIEW v_key_usage_daily AS
SELECT u.key_id,
       k.name                       AS key_name,
       DATE(u.created_at)           AS day,
       COUNT(*)                     AS requests,
       SUM(u.status_code >= 400)    AS errors,
       SUM(u.input_tokens)          AS input_tokens,
       SUM(u.output_tokens)         AS output_tokens,
       SUM(u.total_tokens)          AS total_tokens,
       SUM(u.cost_usd)              AS cost_usd,
       ROUND(AVG(u.duration_ms))    AS avg_duration_ms
  FROM usage_logs u
  LEFT JOIN api_keys k ON k.id = u.key_id
 WHERE u.key_id IS NOT NULL
 GROUP BY u.key_id, k.name, DATE(u.created_at);

-- Each key's limits beside what it used in the current UTC minute and day.
CREATE OR REPLACE VIEW v_key_quota_status AS
SELECT k.id AS key_id, k.name, k.status,
       k.requests_per_minute,
       IFNULL(m.requests, 0)        AS requests_this_minute,
       k.requests_per_day,
       IFNULL(d.requests, 0)        AS requests_today,
       k.tokens_per_day,
       IFNULL(d.tokens, 0)          AS tokens_today
  FROM api_keys k
  LEFT JOIN key_quota_windows m
         ON m.key_id = k.id AND m.kind = 'minute'
        AND m.window_start = DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:%i:00')
  LEFT JOIN key_quota_windows d
         ON d.key_id = k.id AND d.kind = 'day'
        AND d.window_start = CAST(UTC_DATE() AS DATETIME);

-- Failed requests of the last 7 days, newest first.
CREATE OR REPLACE VIEW v_recent_errors AS
SELECT id, created_at, request_id, key_id, tenant, route, method,
       status_code, model, error, duration_ms
  FROM usage_logs
 WHERE status_code >= 400
   AND created_at >= UTC_TIMESTAMP() - INTERVAL 7 DAY
 ORDER BY id DESC;

-- Each tenant's live conversations, with their message counts.
CREATE OR REPLACE VIEW v_tenant_conversations AS
SELECT c.tenant, c.id AS conversation_id, c.title, c.model, c.node,
       c.created_at, c.updated_at,
       (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)
           AS messages
  FROM conversations c
 WHERE c.deleted_at IS NULL;

-- Suspend a key (by hand, from SQL); audited as the SQL user.
CREATE OR REPLACE PROCEDURE suspend_key(IN p_key_id VARCHAR(16))
    MODIFIES SQL DATA
BEGIN
    DECLARE old_status VARCHAR(16);
    SELECT status INTO old_status FROM api_keys WHERE id = p_key_id FOR UPDATE;
    IF old_status IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no such key';
    END IF;
    IF old_status = 'revoked' THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the key is revoked';
    END IF;
    UPDATE api_keys SET status = 'suspended' WHERE id = p_key_id;
    INSERT INTO audit_log (actor, action, object_type, object_id,
        before_state, after_state, created_at)
    VALUES (CONCAT('sql:', SESSION_USER()), 'key.suspend', 'api_key',
        p_key_id, JSON_OBJECT('status', old_status),
        JSON_OBJECT('status', 'suspended'), UTC_TIMESTAMP(3));
END;

-- Set a key's limits (NULL: unlimited); audited as the SQL user.
CREATE OR REPLACE PROCEDURE set_key_limits(IN p_key_id VARCHAR(16),
    IN p_rpm INT UNSIGNED, IN p_rpd INT UNSIGNED, IN p_tpd BIGINT UNSIGNED)
    MODIFIES SQL DATA
BEGIN
    DECLARE o_rpm, o_rpd INT UNSIGNED;
    DECLARE o_tpd BIGINT UNSIGNED;
    DECLARE found INT DEFAULT 0;
    SELECT 1, requests_per_minute, requests_per_day, tokens_per_day
      INTO found, o_rpm, o_rpd, o_tpd
      FROM api_keys WHERE id = p_key_id FOR UPDATE;
    IF found = 0 THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no such key';
    END IF;
    UPDATE api_keys SET requests_per_minute = p_rpm,
           requests_per_day = p_rpd, tokens_per_day = p_tpd
     WHERE id = p_key_id;
    INSERT INTO audit_log (actor, action, object_type, object_id,
        before_state, after_state, created_at)
    VALUES (CONCAT('sql:', SESSION_USER()), 'key.limits', 'api_key', p_key_id,
        JSON_OBJECT('requests_per_minute', o_rpm, 'requests_per_day', o_rpd,
            'tokens_per_day', o_tpd),
        JSON_OBJECT('requests_per_minute', p_rpm, 'requests_per_day', p_rpd,
            'tokens_per_day', p_tpd),
        UTC_TIMESTAMP(3));
END;
