/*
 * The turn engine, free of any dialect.  A turn stores the user's
 * message, hands the job to ccgate-poold, relays its events (as SSE when
 * streaming) through the dialect's turn_ops, and stores the answer, its
 * usage and the CLI session that now holds the conversation.  If the CLI
 * session cannot be resumed (its transcript is gone), a new session is
 * primed with the messages kept in MariaDB.
 */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "log.h"
#include "proto.h"

#define TURN_STORE_RETRY_MS	500
#define TURN_PRIME_MAX		(512 * 1024)

enum turn_end {
	TURN_DONE,
	TURN_ERROR,
	TURN_GONE
};

/* Map a pool error code to an HTTP status. */
static int
turn_status(const char *code)
{
	if (strcmp(code, PROTO_E_BUSY) == 0 ||
	    strcmp(code, PROTO_E_SHUTTING_DOWN) == 0 ||
	    strcmp(code, "unavailable") == 0 ||
	    strcmp(code, PROTO_E_UPSTREAM_OVERLOADED) == 0 ||
	    strcmp(code, PROTO_E_UPSTREAM_CREDENTIAL) == 0)
		return (503);
	if (strcmp(code, PROTO_E_KEY_BUSY) == 0 ||
	    strcmp(code, PROTO_E_TENANT_BUSY) == 0 ||
	    strcmp(code, PROTO_E_UPSTREAM_LIMITED) == 0)
		return (429);
	if (strcmp(code, PROTO_E_TIMEOUT) == 0)
		return (504);
	if (strcmp(code, PROTO_E_BAD_REQUEST) == 0)
		return (400);
	if (strcmp(code, PROTO_E_INTERNAL) == 0)
		return (500);
	return (502);
}

/* Whether the pool refused the job before any CLI saw it. */
static int
turn_refused(const char *code)
{
	return (strcmp(code, PROTO_E_BUSY) == 0 ||
	    strcmp(code, PROTO_E_KEY_BUSY) == 0 ||
	    strcmp(code, PROTO_E_TENANT_BUSY) == 0 ||
	    strcmp(code, PROTO_E_SHUTTING_DOWN) == 0);
}

/*
 * What a turn that ended is charged of the key's tokens_per_day: input,
 * cache-creation input and output tokens (cache reads are not counted).
 * Done: the CLI's usage; but a CLI that ran the tenant's own tools
 * (allow_tools) may have been made to misreport it, so never less than
 * the turn held.  Failed before any CLI had it (refused, queued too
 * long): nothing.  Failed after, timed out, or left by its client: what
 * it held, or what it was seen to use if more (the upstream was asked,
 * and what a CLI says of an error is not believed either).
 */
static long long
turn_charge(const struct turn *t, enum turn_end end)
{
	long long	used, held = req_reserved(t->r);

	if (end == TURN_DONE)
		used = t->in + t->out + t->cache_creation;
	else
		used = t->start_in + t->start_cache_creation;
	if (end == TURN_ERROR && !t->ran)
		return (0);
	if (end == TURN_DONE && !req_key(t->r)->allow_tools)
		return (used);
	return (used > held ? used : held);
}

/* Set the turn's error. */
static void
turn_set_error(struct turn *t, const char *code, const char *msg)
{
	snprintf(t->code, sizeof t->code, "%s", code);
	snprintf(t->error, sizeof t->error, "%s", msg);
}

/*
 * Say where the time to the first text went (Server-Timing, in ms): app is
 * ccgate-fcgi from the request to the job's hand-over, pool is
 * ccgate-poold and the CLI from there to the first text, cli the CLI's
 * own part of pool (ccgate-poold's first event says it).  What a client
 * measures beyond app and pool is nginx and the network; beyond cli, what
 * the gateway added to the CLI's time.
 */
static void
turn_timing(struct turn *t, json_t *event)
{
	json_t		*cli = json_object_get(event, "cli_us");
	uint64_t	 now = util_now_us();
	char		 v[128];
	int		 n;

	n = snprintf(v, sizeof v, "app;dur=%.2f, pool;dur=%.2f",
	    (double)(t->job_us - req_started_us(t->r)) / 1000.0,
	    (double)(now - t->job_us) / 1000.0);
	if (json_is_integer(cli) && n > 0 && (size_t)n < sizeof v)
		snprintf(v + n, sizeof v - (size_t)n, ", cli;dur=%.2f",
		    (double)json_integer_value(cli) / 1000.0);
	req_add_header(t->r, "Server-Timing", v);
}

/*
 * The message as the CLI is to see it when it holds images: the client's
 * blocks, or, when the session is primed, the primed text (which quotes
 * the message's text) and then the message's images.
 */
static json_t *
turn_content(const struct turn *t)
{
	json_t	*out, *b;
	size_t	 i;

	if (t->send == t->message)
		return (json_incref(t->content));
	if ((out = json_pack("[{s:s, s:s}]", "type", "text", "text",
	    t->send)) == NULL)
		return (NULL);
	json_array_foreach(t->content, i, b) {
		if (strcmp(json_string_value(json_object_get(b, "type")),
		    "image") == 0 && json_array_append(out, b) != 0) {
			json_decref(out);
			return (NULL);
		}
	}
	return (out);
}

/* Build the job message for the turn. */
static json_t *
turn_job_msg(struct turn *t)
{
	json_t	*job = proto_new(PROTO_JOB);

	if (job == NULL)
		return (NULL);
	if (json_object_set_new(job, "id", json_string(req_id(t->r))) ||
	    json_object_set_new(job, "tenant",
	    json_string(t->conv->tenant)) ||
	    json_object_set_new(job, "key", json_string(req_key(t->r)->id)) ||
	    json_object_set_new(job, "conversation", json_string(t->conv->id)) ||
	    json_object_set_new(job, "model", json_string(t->conv->model)) ||
	    json_object_set_new(job, "message", json_string(t->send)) ||
	    json_object_set_new(job, "timeout_ms",
	    json_integer(appconf->job_timeout_ms))) {
		json_decref(job);
		return (NULL);
	}
	if (t->resume && t->conv->cli_session_id[0] != '\0')
		json_object_set_new(job, "resume",
		    json_string(t->conv->cli_session_id));
	if (t->conv->system_prompt != NULL)
		json_object_set_new(job, "system_prompt",
		    json_string(t->conv->system_prompt));
	if (t->max_tokens > 0)
		json_object_set_new(job, "max_tokens",
		    json_integer(t->max_tokens));
	if (t->tools != NULL)
		json_object_set(job, "client_tools", t->tools);
	if (t->tools != NULL && t->must_call != NULL && *t->must_call != '\0')
		json_object_set_new(job, "tool_choice",
		    json_string(t->must_call));
	if (t->output_schema != NULL)
		json_object_set(job, "output_schema", t->output_schema);
	if (t->tool_results != NULL && t->send == t->message)
		json_object_set(job, "tool_results", t->tool_results);
	if (t->stops != NULL)
		json_object_set(job, "stop", t->stops);
	if (t->content != NULL && json_object_set_new(job, "content",
	    turn_content(t)) != 0) {
		json_decref(job);
		return (NULL);
	}
	/* The key's own concurrency: ccgate-poold queues or refuses. */
	if (req_key(t->r)->max_concurrent > 0 && (json_object_set_new(job,
	    "key_max_jobs", json_integer(req_key(t->r)->max_concurrent)) ||
	    json_object_set_new(job, "queue",
	    json_boolean(req_key(t->r)->queue)))) {
		json_decref(job);
		return (NULL);
	}
	/* The CLI's own tools, in the tenant's sandboxed workspace. */
	if (req_key(t->r)->allow_tools)
		json_object_set_new(job, "tools", json_true());
	return (job);
}

/*
 * Open the stream: its headers and the dialect's opening events, held so
 * that they go out with the event the caller sends next (the first delta,
 * a heartbeat, the final events).
 */
static int
turn_stream_open(struct turn *t)
{
	int	rc = 0;

	req_sse_hold(t->r, 1);
	if (req_sse_start(t->r) != 0)
		rc = -1;
	else if (!t->started) {
		t->started = 1;
		if (t->ops->start != NULL && t->ops->start(t) != 0)
			rc = -1;
	}
	req_sse_hold(t->r, 0);
	return (rc);
}

/* Send one delta to a streaming client, opening the stream first. */
static int
turn_send_delta(struct turn *t, const char *text)
{
	if (turn_stream_open(t) != 0)
		return (-1);
	return (t->ops->delta(t, text));
}

/* An event's input usage (ccgate-poold's first): the dialect may show it. */
static void
turn_event_usage(struct turn *t, json_t *u)
{
	if (!json_is_object(u) || t->have_start_usage)
		return;
	t->have_start_usage = 1;
	t->start_in = json_integer_value(json_object_get(u, "input_tokens"));
	t->start_cache_read = json_integer_value(json_object_get(u,
	    "cache_read_input_tokens"));
	t->start_cache_creation = json_integer_value(json_object_get(u,
	    "cache_creation_input_tokens"));
}

/* Keep the partial text of a job that failed. */
static void
turn_keep_partial(struct turn *t, json_t *f)
{
	const char	*text = json_string_value(json_object_get(f, "text"));

	free(t->partial);
	t->partial = text != NULL && *text != '\0' ? strdup(text) : NULL;
}

/*
 * A change of the upstream account's state: record it in the audit log,
 * as ccgate-poold's doing.
 */
static void
turn_audit_change(struct turn *t, json_t *c)
{
	static const char *const names[] = { "ok", "limited", "overloaded",
	    "credential_rejected", NULL };
	json_t		*before, *after;
	struct actor	 who;
	const char	*from, *to;
	int		 i, okf = 0, okt = 0;

	if (!json_is_object(c))
		return;
	from = json_string_value(json_object_get(c, "from"));
	to = json_string_value(json_object_get(c, "to"));
	for (i = 0; names[i] != NULL; i++) {
		okf |= from != NULL && strcmp(from, names[i]) == 0;
		okt |= to != NULL && strcmp(to, names[i]) == 0;
	}
	if (!okf || !okt)
		return;
	memset(&who, 0, sizeof who);
	snprintf(who.name, sizeof who.name, "system:ccgate-poold");
	before = json_pack("{s:s}", "state", from);
	after = json_pack("{s:s, s:O, s:O, s:O, s:O, s:s}", "state", to,
	    "status", json_object_get(c, "status") ? json_object_get(c,
	    "status") : json_null(), "reset", json_object_get(c, "reset") ?
	    json_object_get(c, "reset") : json_null(), "serial",
	    json_object_get(c, "serial") ? json_object_get(c, "serial") :
	    json_null(), "at", json_object_get(c, "at") ? json_object_get(c,
	    "at") : json_null(), "request_id", req_id(t->r));
	log_warnx("request %s: the upstream account is now %s (was %s)",
	    req_id(t->r), to, from);
	if (before == NULL || after == NULL || audit_record(db_thread(), &who,
	    "upstream.state", "upstream", "account", before, after) != 0)
		log_warnx("request %s: upstream state change not audited",
		    req_id(t->r));
	db_release();
	json_decref(before);
	json_decref(after);
}

/*
 * Audit the changes of the upstream account's state that ccgate-poold
 * hands on with a job's last frame (each change rides on exactly one).
 */
static void
turn_audit_upstream(struct turn *t, json_t *f)
{
	json_t	*c;
	size_t	 i;

	json_array_foreach(json_object_get(f, "upstream_changes"), i, c) {
		turn_audit_change(t, c);
	}
}

/*
 * Run one job on the pool and relay its events.  Returns how it ended;
 * on TURN_DONE t->done holds the done frame.  The thread's database
 * connection goes back to the pool first: a turn may take minutes.
 */
static enum turn_end
turn_pool(struct turn *t)
{
	struct poolc	*pc;
	json_t		*job, *f;
	const char	*type, *text;
	char		*cause = NULL;
	uint64_t	 deadline;
	int		 why, wait;
	enum turn_end	 end = TURN_ERROR;

	db_release();
	if ((job = turn_job_msg(t)) == NULL) {
		turn_set_error(t, PROTO_E_INTERNAL, "out of memory");
		return (TURN_ERROR);
	}
	/* Before the send: ccgate-poold may run the job before we run on. */
	t->job_us = util_now_us();
	if ((pc = poolc_open(appconf->poold_socket, &cause)) == NULL ||
	    poolc_send(pc, job, &cause) != 0) {
		log_warnx("request %s: %s", req_id(t->r), cause);
		turn_set_error(t, "unavailable",
		    "the CLI pool is unavailable; retry shortly");
		free(cause);
		json_decref(job);
		poolc_close(pc);
		return (TURN_ERROR);
	}
	json_decref(job);
	deadline = util_now_ms() + (uint64_t)appconf->job_timeout_ms + 30000;

	for (;;) {
		wait = (int)appconf->sse_heartbeat_ms;
		if (util_now_ms() >= deadline) {
			turn_set_error(t, PROTO_E_TIMEOUT,
			    "the job passed its time limit");
			break;
		}
		f = poolc_next(pc, req_fd(t->r), wait, &why, &cause);
		if (f == NULL) {
			if (why == POOLC_GONE) {
				end = TURN_GONE;
				break;
			}
			if (why == POOLC_TIMEOUT) {
				if (!t->stream)
					continue;
				/*
				 * The headers and a comment: the dialect's
				 * opening events wait for the answer's first
				 * (Anthropic's message_start for its usage).
				 */
				if (req_sse_start(t->r) != 0 ||
				    req_sse_data(t->r, ": keep-alive") != 0) {
					end = TURN_GONE;
					break;
				}
				continue;
			}
			log_warnx("request %s: pool: %s", req_id(t->r), cause);
			free(cause);
			cause = NULL;
			turn_set_error(t, "unavailable",
			    "lost the connection to the CLI pool");
			break;
		}
		type = proto_type(f);
		if (strcmp(type, PROTO_EVENT) == 0) {
			t->ran = 1;
			turn_event_usage(t, json_object_get(f, "usage"));
			text = json_string_value(json_object_get(f, "text"));
			if (text != NULL && t->ttft_ms < 0) {
				t->ttft_ms = (long long)(util_now_ms() -
				    t->started_ms);
				turn_timing(t, f);
			}
			if (text != NULL && t->stream &&
			    turn_send_delta(t, text) != 0) {
				json_decref(f);
				end = TURN_GONE;
				break;
			}
			json_decref(f);
			continue;
		}
		if (strcmp(type, PROTO_DONE) == 0) {
			turn_audit_upstream(t, f);
			t->done = f;
			end = TURN_DONE;
			break;
		}
		if (strcmp(type, PROTO_ERROR) == 0) {
			turn_set_error(t, json_string_value(json_object_get(f,
			    "code")) ? json_string_value(json_object_get(f,
			    "code")) : PROTO_E_INTERNAL,
			    json_string_value(json_object_get(f, "message")) ?
			    json_string_value(json_object_get(f, "message")) :
			    "the CLI pool failed");
			turn_keep_partial(t, f);
			if (json_is_true(json_object_get(f, "ran")))
				t->ran = 1;
			if (json_is_integer(json_object_get(f, "retry_after")))
				t->retry_after = (long)json_integer_value(
				    json_object_get(f, "retry_after"));
			turn_audit_upstream(t, f);
		} else
			turn_set_error(t, PROTO_E_INTERNAL,
			    "unexpected message from the CLI pool");
		json_decref(f);
		break;
	}
	poolc_close(pc);
	return (end);
}

/*
 * The message that primes a new CLI session with a conversation's stored
 * history (all messages but the last, which is the new turn), or NULL if
 * there is none.  Keeps the most recent turns that fit in TURN_PRIME_MAX.
 */
static char *
turn_prime(struct db *db, struct turn *t)
{
	struct db_res	*res;
	char		*out = NULL, *hist = NULL;
	size_t		 i, start, total = 0;
	FILE		*f;
	size_t		 len;

	if (db_run(db, &res, NULL, "SELECT role, content FROM messages WHERE "
	    "conversation_id = ? ORDER BY id", "s", t->conv->id) != 0)
		return (NULL);
	if (res->nrows < 2) {		/* nothing before the new message */
		db_res_free(res);
		return (NULL);
	}
	start = res->nrows - 1;
	while (start > 0 && total + res->lens[(start - 1) * 2 + 1] + 32 <
	    TURN_PRIME_MAX) {
		start--;
		total += res->lens[start * 2 + 1] + 32;
	}
	if ((f = open_memstream(&hist, &len)) == NULL) {
		db_res_free(res);
		return (NULL);
	}
	fprintf(f, "This conversation continues from earlier turns, quoted "
	    "below. Answer the new message as the assistant would, with "
	    "that context.\n\n");
	for (i = start; i < res->nrows - 1; i++)
		fprintf(f, "[%s]\n%s\n\n", db_cell(res, i, 0),
		    db_cell(res, i, 1) ? db_cell(res, i, 1) : "");
	fprintf(f, "[new message from the user]\n%s", t->message);
	if (fclose(f) != 0) {
		free(hist);
		hist = NULL;
	}
	out = hist;
	db_res_free(res);
	return (out);
}

/*
 * Store the answer: the conversation's CLI session and history hash, and
 * the assistant's message.  While the database does not answer, try again
 * every TURN_STORE_RETRY_MS for db_retry_ms, so that an outage shorter
 * than that loses no answer (the client waits; a stream gets its
 * heartbeats meanwhile); then the answer goes to the spool (spool.c),
 * stored from there when the database answers again.  Returns 0, or -1
 * when the answer is lost (no spool, or it could not be written).
 */
static int
turn_store_answer(struct turn *t, const char *hash)
{
	struct db	*db;
	struct timespec	 pause = { 0, TURN_STORE_RETRY_MS * 1000000L };
	uint64_t	 deadline = util_now_ms() +
			     (uint64_t)appconf->db_retry_ms;
	int		 session_done;

	session_done = t->session_id == NULL ||
	    !util_valid_uuid(t->session_id);
	for (;;) {
		db = db_thread();
		if (!session_done && conv_set_session(db, t->conv->id,
		    t->session_id, hash) == 0)
			session_done = 1;
		if (session_done && conv_add_answer(db, t->conv->id,
		    t->stored != NULL ? t->stored : t->text, req_id(t->r),
		    t->in, t->out, t->cost) == 0)
			return (0);
		if (util_now_ms() >= deadline)
			break;
		db_release();	/* for a connection that works, next time */
		if (t->stream && t->started)
			(void)req_sse_data(t->r, ": keep-alive");
		(void)nanosleep(&pause, NULL);
	}
	/* On disk, stored when the database answers again (spool.c). */
	db_release();
	if (spool_answer(t->conv->id, req_id(t->r), t->stored != NULL ?
	    t->stored : t->text, t->in, t->out, t->cost,
	    t->conv->history_hash, hash, t->session_id != NULL &&
	    util_valid_uuid(t->session_id) ? t->session_id : NULL) != 0)
		return (-1);
	log_warnx("request %s: the database did not take the answer for %ld "
	    "ms: it is spooled, and stored when the database answers",
	    req_id(t->r), appconf->db_retry_ms);
	return (0);
}

/* The answer with its tool calls as lines, into t->stored. */
static int
turn_stored_calls(struct turn *t)
{
	json_t	*c;
	size_t	 i;

	if ((t->stored = strdup(t->text)) == NULL)
		return (-1);
	json_array_foreach(t->tool_calls, i, c) {
		if (turn_mark_call(&t->stored, json_string_value(
		    json_object_get(c, "id")), json_string_value(
		    json_object_get(c, "name")), json_object_get(c, "input")) !=
		    0)
			return (-1);
	}
	return (0);
}

/*
 * A tools turn that left its workspace past its tenant's limits: said in
 * the answer (t->workspace) and the usage row's error.  The next write
 * through the files API is refused; the turn's own writes were the CLI's.
 */
static void
turn_workspace(struct turn *t)
{
	json_t		*ws = json_object_get(t->done, "workspace");
	long long	 bytes, files, max_bytes, max_files;
	char		 msg[256];

	if (!json_is_object(ws) || tenant_limits(db_thread(), t->conv->tenant,
	    &max_bytes, &max_files) != 0) {
		db_release();
		return;
	}
	db_release();
	bytes = json_integer_value(json_object_get(ws, "bytes"));
	files = json_integer_value(json_object_get(ws, "files"));
	if ((max_bytes == 0 || bytes <= max_bytes) &&
	    (max_files == 0 || files <= max_files))
		return;
	snprintf(msg, sizeof msg, "the turn left the workspace over its "
	    "limits: %lld bytes (workspace_max_bytes %lld), %lld files "
	    "(workspace_max_files %lld)", bytes, max_bytes, files, max_files);
	t->workspace = json_pack("{s:I, s:I, s:I, s:I, s:b, s:s}", "bytes",
	    (json_int_t)bytes, "files", (json_int_t)files, "max_bytes",
	    (json_int_t)max_bytes, "max_files", (json_int_t)max_files,
	    "over_limit", 1, "message", msg);
	req_usage(t->r, t->conv->model, t->in, t->out, t->cache_read,
	    t->cache_creation, t->cost, t->ttft_ms, msg);
}

/*
 * The workspace files a tools turn changed (the done frame's "files"),
 * with the SHA-256 of each that is there, read through ccgate-poold
 * (bounded by files_hash_max_bytes).
 */
static void
turn_files(struct turn *t)
{
	json_t		*files = json_object_get(t->done, "files"), *v, *f;
	const char	*path, *change;
	long long	 budget = appconf->files_hash_max_bytes, size;
	size_t		 i;

	if (!json_is_array(files) || (t->files = json_array()) == NULL)
		return;
	turn_workspace(t);
	json_array_foreach(files, i, v) {
		path = json_string_value(json_object_get(v, "path"));
		change = json_string_value(json_object_get(v, "change"));
		if (path == NULL || change == NULL)
			continue;
		size = json_integer_value(json_object_get(v, "size"));
		f = json_pack("{s:s, s:s, s:I, s:o}", "path", path, "change",
		    change, "size", (json_int_t)size, "sha256",
		    strcmp(change, "deleted") == 0 ? json_null() :
		    poolc_file_sha256(appconf->poold_socket,
		    t->conv->tenant, path, size, &budget));
		if (f != NULL)
			json_array_append_new(t->files, f);
	}
}

/* Store the answer, extend the history hash, and send the answer. */
static void
turn_finish_done(struct turn *t)
{
	json_t	*u = json_object_get(t->done, "usage");
	char	 h1[65], h2[65];

	t->session_id = json_string_value(json_object_get(t->done,
	    "session_id"));
	t->text = json_string_value(json_object_get(t->done, "text"));
	if (t->text == NULL)
		t->text = "";
	t->stop_reason = json_string_value(json_object_get(t->done,
	    "stop_reason"));
	if (t->stop_reason == NULL)
		t->stop_reason = "end_turn";
	t->stop_sequence = json_string_value(json_object_get(t->done,
	    "stop_sequence"));
	/*
	 * The model called the client's tools: the answer is kept with the
	 * calls as lines (as the client will send them back), and the turn
	 * waits on its process for their results (ccgate-poold).
	 */
	t->tool_calls = json_object_get(t->done, "tool_calls");
	if (json_array_size(t->tool_calls) > 0 && turn_stored_calls(t) != 0)
		log_warnx("request %s: out of memory: the tool calls are not "
		    "stored", req_id(t->r));
	t->in = json_integer_value(json_object_get(u, "input_tokens"));
	t->out = json_integer_value(json_object_get(u, "output_tokens"));
	t->cache_read = json_integer_value(json_object_get(u,
	    "cache_read_input_tokens"));
	t->cache_creation = json_integer_value(json_object_get(u,
	    "cache_creation_input_tokens"));
	t->cost = json_number_value(json_object_get(t->done, "cost_usd"));
	req_settle(t->r, turn_charge(t, TURN_DONE));
	req_usage(t->r, t->conv->model, t->in, t->out, t->cache_read,
	    t->cache_creation, t->cost, t->ttft_ms, NULL);
	conv_chain(t->conv->history_hash, "user", t->message, h1);
	conv_chain(h1, "assistant", t->stored != NULL ? t->stored : t->text, h2);
	if (turn_store_answer(t, h2) != 0)
		log_warnx("request %s: the answer could not be stored: the "
		    "database did not answer for %ld ms, and the spool did "
		    "not take it", req_id(t->r), appconf->db_retry_ms);
	db_release();	/* a slow reader must not hold it */
	snprintf(t->conv->history_hash, sizeof t->conv->history_hash, "%s", h2);
	turn_files(t);
	if (t->stream && turn_stream_open(t) != 0) {
		log_info("request %s: client left before the end",
		    req_id(t->r));
		return;
	}
	t->ops->done(t);
}

/* Store what a failed turn produced and answer with the error. */
static void
turn_finish_error(struct turn *t, enum turn_end end)
{
	struct db	*db = db_thread();
	int		 status = end == TURN_GONE ? 499 : turn_status(t->code);
	const char	*type;
	char		 ra[24];

	if (end == TURN_GONE)
		turn_set_error(t, "cancelled", "the client closed the "
		    "connection");
	req_settle(t->r, turn_charge(t, end));
	req_usage(t->r, t->conv->model, 0, 0, 0, 0, 0.0, t->ttft_ms, t->error);
	if (t->partial != NULL && conv_add_message(db, t->conv->id,
	    "assistant", t->partial, req_id(t->r), 0, 0, 0.0) != 0)
		log_warnx("request %s: partial answer not stored",
		    req_id(t->r));
	/* A session no CLI touched still holds the conversation. */
	if (!turn_refused(t->code) && conv_forget_session(db, t->conv) != 0)
		log_warnx("request %s: conversation %s keeps its CLI session",
		    req_id(t->r), t->conv->id);
	db_release();
	if (end == TURN_GONE) {
		/* A WebSocket is still there after a cancel: tell it. */
		if (req_sent(t->r))
			t->ops->stream_error(t, 499, "cancelled", t->error);
		req_error(t->r, 499, "cancelled", "%s", t->error);
		return;
	}
	type = dialect_upstream_type(req_route(t->r)->dialect, t->code);
	if (t->retry_after > 0 && t->retry_after <= 7 * 86400) {
		/* The upstream account's wait (a plan's reset, a cool-down). */
		snprintf(ra, sizeof ra, "%ld", t->retry_after);
		req_add_header(t->r, "Retry-After", ra);
	} else if (status == 503)
		req_add_header(t->r, "Retry-After", "2");
	else if (status == 429)		/* the key's own turns still run */
		req_add_header(t->r, "Retry-After", "1");
	if (req_sent(t->r))
		t->ops->stream_error(t, status, type != NULL ? type :
		    dialect_error_type(req_route(t->r)->dialect, status),
		    t->error);
	req_error(t->r, status, type, "%s", t->error);
}

/* Append a line to *text (a malloc'd string): a newline, then fmt. */
int
turn_append(char **text, const char *fmt, ...)
{
	va_list	 ap;
	char	*add, *nt;
	int	 rc;

	va_start(ap, fmt);
	rc = vasprintf(&add, fmt, ap);
	va_end(ap);
	if (rc == -1)
		return (-1);
	rc = asprintf(&nt, "%s%s%s", *text, **text != '\0' ? "\n" : "", add);
	free(add);
	if (rc == -1)
		return (-1);
	free(*text);
	*text = nt;
	return (0);
}

/*
 * A tool call in a message's text, as history hashing and storage keep it:
 * the call's id, name and input (its JSON, keys sorted), on a line.
 */
int
turn_mark_call(char **text, const char *id, const char *name,
    json_t *input)
{
	char	*js;
	int	 rc;

	if ((js = json_dumps(input, JSON_COMPACT | JSON_SORT_KEYS |
	    JSON_ENCODE_ANY)) == NULL)
		return (-1);
	rc = turn_append(text, "[tool_use %s %s %s]", id, name, js);
	free(js);
	return (rc);
}

/* Prepare a turn of conv (the caller keeps conv and message alive). */
void
turn_init(struct turn *t, struct request *r, const struct turn_ops *ops,
    struct conversation *conv, const char *message, long long max_tokens,
    int stream)
{
	memset(t, 0, sizeof *t);
	t->r = r;
	t->ops = ops;
	t->conv = conv;
	t->message = t->send = message;
	t->max_tokens = max_tokens;
	t->stream = stream;
	t->resume = 1;
	t->ttft_ms = -1;
	t->missing = CONV_MISSING;
	t->started_ms = util_now_ms();
	t->created = (long long)time(NULL);
}

/*
 * Run a turn: store the user's message, run the job (priming a new session
 * from the stored history if asked to, or if the old session cannot be
 * resumed), store and send the answer.
 */
void
turn_run(struct turn *t)
{
	struct request	*r = t->r;
	enum turn_end	 end;
	char		*primed = NULL;

	/* turn_pool gives the connection back: take it afresh each time. */
	switch (conv_add_user_message(db_thread(), t->conv, t->message,
	    req_id(r))) {
	case 0:
		break;
	case 1:		/* deleted since this process last saw it */
		req_error(r, 404, NULL, "%s", t->missing);
		return;
	default:
		req_db_down(r);
		return;
	}
	/*
	 * A new session (or none to resume after a failed turn) for a
	 * conversation with stored messages starts from those messages.
	 */
	if ((t->prime || (!t->conv->fresh &&
	    t->conv->cli_session_id[0] == '\0')) &&
	    (primed = turn_prime(db_thread(), t)) != NULL) {
		t->send = primed;
		t->resume = 0;
	}
	end = turn_pool(t);
	if (end == TURN_ERROR && strcmp(t->code, PROTO_E_RESUME_FAILED) == 0 &&
	    !req_sent(r) && primed == NULL &&
	    (primed = turn_prime(db_thread(), t)) != NULL) {
		log_info("request %s: session %s is gone; priming a new one",
		    req_id(r), t->conv->cli_session_id);
		t->send = primed;
		t->resume = 0;
		end = turn_pool(t);
	}
	if (end == TURN_DONE)
		turn_finish_done(t);
	else
		turn_finish_error(t, end);
	json_decref(t->done);
	json_decref(t->files);
	json_decref(t->workspace);
	free(t->partial);
	free(primed);
	free(t->stored);
}
