-- ccgate schema, migration 008: a usage row is written once per request.
-- usage.c writes its rows in batches and tries a batch again when it
-- failed; on a Galera cluster (or any server whose COMMIT answer can be
-- lost) a batch that was in fact committed could be written twice.  With
-- request_id unique, and the rows written with ON DUPLICATE KEY UPDATE
-- (an insert-ignore that still reports real errors), a batch tried again
-- adds nothing.  Rows that share an id already (none are expected: ids are
-- nginx's $request_id, a WebSocket turn's id is its connection's with a
-- counter) keep their first row's id; the others get a suffix.
UPDATE usage_logs u
    JOIN (SELECT request_id, MIN(id) AS keep_id FROM usage_logs
          GROUP BY request_id HAVING COUNT(*) > 1) d
      ON u.request_id = d.request_id AND u.id <> d.keep_id
    SET u.request_id = CONCAT(LEFT(u.request_id, 40), '~dup', u.id);
DROP INDEX IF EXISTS idx_usage_request ON usage_logs;
CREATE UNIQUE INDEX IF NOT EXISTS uq_usage_request ON usage_logs (request_id);
