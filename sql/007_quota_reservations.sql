-- ccgate schema, migration 007: tokens_per_day held by turns in flight.
-- A turn reserves its estimate (max_tokens, or quota_reserve_tokens, plus
-- its prompt's size) in the day's window before it runs; admission counts
-- the day's tokens and every reservation against tokens_per_day, so
-- concurrent turns cannot all pass.  The turn's real usage replaces its
-- reservation when it ends.  Each reservation is also a row here, with an
-- expiry, so that one a dead ccgate-fcgi process left behind is given back
-- (quota.c) instead of holding the key's day.
ALTER TABLE key_quota_windows
    ADD COLUMN IF NOT EXISTS reserved BIGINT UNSIGNED NOT NULL DEFAULT 0
    COMMENT 'tokens held by turns in flight (day windows)';

CREATE TABLE IF NOT EXISTS quota_reservations (
    key_id          VARCHAR(16)  NOT NULL,
    request_id      VARCHAR(64)  NOT NULL,
    day             DATE         NOT NULL COMMENT 'the day window it holds',
    tokens          BIGINT UNSIGNED NOT NULL,
    expires_at      DATETIME     NOT NULL
                    COMMENT 'given back after this if never settled',
    PRIMARY KEY (key_id, request_id),
    KEY idx_quota_reservations_expiry (key_id, expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The operators' view of a key's windows, with what turns in flight hold.
CREATE OR REPLACE VIEW v_key_quota_status AS
SELECT k.id AS key_id, k.name, k.status,
       k.requests_per_minute,
       IFNULL(m.requests, 0)        AS requests_this_minute,
       k.requests_per_day,
       IFNULL(d.requests, 0)        AS requests_today,
       k.tokens_per_day,
       IFNULL(d.tokens, 0)          AS tokens_today,
       IFNULL(d.reserved, 0)        AS tokens_reserved
  FROM api_keys k
  LEFT JOIN key_quota_windows m
         ON m.key_id = k.id AND m.kind = 'minute'
        AND m.window_start = DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:%i:00')
  LEFT JOIN key_quota_windows d
         ON d.key_id = k.id AND d.kind = 'day'
        AND d.window_start = CAST(UTC_DATE() AS DATETIME);
