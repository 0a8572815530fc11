/*
 * The job protocol between ccgate-fcgi and ccgate-poold.
 *
 * A unix stream socket.  Each message is a frame: a 4-byte big-endian
 * length, then that many bytes of one JSON object.  Every object carries
 * "v" (PROTO_VERSION) and "type".  One connection per job: the client sends
 * "job" and reads "event" frames until "done" or "error"; closing the
 * connection cancels the job.  Other connections send one control message
 * ("stats", "set_limits", "drain", "delete", "ping") and read one answer.
 *
 * Whoever changes a message's meaning or removes a field bumps
 * PROTO_VERSION; adding an optional field does not.  docs/protocol.md is
 * the reference and must change with this file.
 */
#ifndef CCGATE_PROTO_H
#define CCGATE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define PROTO_VERSION		1
#define PROTO_HEADER_LEN	4
#define PROTO_DEFAULT_MAX	(1024 * 1024)
#define PROTO_MIN_MAX		1024
/*
 * ccgate-poold's default max_frame: a job carries a client's images (up
 * to max_body of base64), so its frames are larger than the others.
 */
#define PROTO_JOB_MAX		(8 * 1024 * 1024)
/* The largest max_frame there is: what ccgate-fcgi allows itself. */
#define PROTO_LARGEST		(64 * 1024 * 1024)

/* Message types. */
#define PROTO_JOB		"job"
#define PROTO_EVENT		"event"
#define PROTO_DONE		"done"
#define PROTO_ERROR		"error"
#define PROTO_STATS		"stats"
#define PROTO_SET_LIMITS	"set_limits"
#define PROTO_DRAIN		"drain"
#define PROTO_DELETE		"delete"
#define PROTO_PING		"ping"
#define PROTO_COUNT_TOKENS	"count_tokens"
#define PROTO_COUNT		"count"
#define PROTO_OK		"ok"
/*
 * A tenant's workspace files (pool-daemon/files.c, docs/protocol.md): each
 * one control message, answered "ok" or "error".  "file_open" (read) and
 * "file_open" (write) pass an open descriptor with the "ok" frame
 * (SCM_RIGHTS on its first byte): the file to read, or the temporary file
 * to write, which "file_commit" renames into place or "file_abort"
 * removes.
 */
#define PROTO_FILE_OPEN		"file_open"
#define PROTO_FILE_COMMIT	"file_commit"
#define PROTO_FILE_ABORT	"file_abort"
#define PROTO_FILE_DELETE	"file_delete"
#define PROTO_FILE_LIST		"file_list"
#define PROTO_FILE_USAGE	"file_usage"
/* Remove a tenant's processes and its whole folder (ccgate-admin). */
#define PROTO_TENANT_PURGE	"tenant_purge"

/* Error codes carried by "error" frames. */
#define PROTO_E_BAD_REQUEST	"bad_request"
#define PROTO_E_BUSY		"busy"
#define PROTO_E_KEY_BUSY	"key_busy"	/* at the key's own limit, no queue */
#define PROTO_E_TENANT_BUSY	"tenant_busy"	/* its share of the queue is full */
#define PROTO_E_TIMEOUT		"timeout"
#define PROTO_E_CLI_FAILED	"cli_failed"
#define PROTO_E_UPSTREAM	"upstream_error"
#define PROTO_E_RESUME_FAILED	"resume_failed"
#define PROTO_E_SHUTTING_DOWN	"shutting_down"
#define PROTO_E_INTERNAL	"internal"
#define PROTO_E_UNAVAILABLE	"unavailable"
#define PROTO_E_MODEL_MISMATCH	"model_mismatch"
#define PROTO_E_NOT_FOUND	"not_found"	/* no such file */
#define PROTO_E_REFUSED		"refused"	/* a link, not a regular file */
#define PROTO_E_TOO_LARGE	"too_large"	/* past the workspace's limit */
/*
 * The upstream account refused the turn, or ccgate-poold refused it
 * without a CLI while the account is in that state; the frame carries
 * "retry_after" (seconds) and, on the one frame whose turn changed the
 * state, "upstream_change" (docs/protocol.md).
 */
#define PROTO_E_UPSTREAM_LIMITED	"upstream_limited"
#define PROTO_E_UPSTREAM_OVERLOADED	"upstream_overloaded"
#define PROTO_E_UPSTREAM_CREDENTIAL	"upstream_credential"

/* Incremental frame decoder, for non-blocking sockets. */
struct proto_reader {
	uint8_t	*buf;
	size_t	 len;
	size_t	 cap;
	size_t	 max;
};

void	 proto_reader_init(struct proto_reader *, size_t);
void	 proto_reader_free(struct proto_reader *);
int	 proto_reader_feed(struct proto_reader *, const void *, size_t);
int	 proto_reader_next(struct proto_reader *, json_t **, char **);

json_t	*proto_decode(const void *, size_t, char **);
int	 proto_encode(const json_t *, size_t, uint8_t **, size_t *, char **);
json_t	*proto_new(const char *);
const char *proto_type(const json_t *);

int	 proto_write_fd(int, const json_t *, size_t, char **);
json_t	*proto_read_fd(int, size_t, int, char **);

#endif
