-- ccgate schema, migration 003: per-key request and token counts in
-- minute and day windows (UTC), for requests_per_minute, requests_per_day
-- and tokens_per_day.  Admission is a conditional upsert: the row only
-- changes while the limit has room, so the affected-row count tells every
-- ccgate-fcgi process, atomically, whether the request is admitted.
CREATE TABLE IF NOT EXISTS key_quota_windows (
    key_id          VARCHAR(16)  NOT NULL,
    kind            ENUM('minute','day') NOT NULL,
    window_start    DATETIME     NOT NULL,
    requests        INT UNSIGNED NOT NULL DEFAULT 0,
    tokens          BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, kind, window_start),
    KEY idx_quota_window (window_start)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
