/*
 * Jobs and scheduling.  A job runs, in order of preference, on:
 *   1. its conversation's own live process (bound, idle): no spawn;
 *   2. a warm process, if it starts a conversation with the default
 *      profile: the warm process is bound to the tenant there and then;
 *   3. a new process, started with --resume for an existing conversation
 *      or --session-id for a new one, if the pool has room;
 *   4. otherwise it waits in a FIFO queue, bounded in length and time;
 *      the least recently used idle process is evicted to make room.
 * Turns of one conversation never run at once: a second waits its turn.
 */
#include "config.h"

#include <sys/stat.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "poold.h"

/* The names the CLI gives the client's tools when its own are on. */
#define POOL_MCP_PREFIX	"mcp__ccgate__"

static void	pool_finish(struct job *, json_t *);
static void	pool_fail(struct job *, const char *, const char *);
static void	pool_job_free(struct job *);
static void	pool_proc_line(struct proc *, const char *, size_t);
static void	pool_proc_gone(struct proc *);
static struct proc *pool_find_parked(const struct job *);
static void	pool_resume_tools(struct job *, struct proc *);
static int	pool_key_full(const struct job *);
static void	pool_reserve_warm(void);
static int	pool_upstream_refuse(struct job *);

/* Forget a profile's allocations. */
void
profile_clear(struct profile *pr)
{
	free(pr->system_prompt);
	free(pr->client_tools);
	free(pr->output_schema);
	pr->system_prompt = pr->client_tools = pr->output_schema = NULL;
}

/* Copy from into to, strings and all; -1 when memory ran out. */
int
profile_copy(struct profile *to, const struct profile *from)
{
	*to = *from;
	to->system_prompt = to->client_tools = to->output_schema = NULL;
	if ((from->system_prompt != NULL &&
	    (to->system_prompt = strdup(from->system_prompt)) == NULL) ||
	    (from->client_tools != NULL &&
	    (to->client_tools = strdup(from->client_tools)) == NULL) ||
	    (from->output_schema != NULL &&
	    (to->output_schema = strdup(from->output_schema)) == NULL)) {
		profile_clear(to);
		return (-1);
	}
	return (0);
}

/* Two optional strings alike (both NULL, or equal). */
static int
profile_same(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return (a == b);
	return (strcmp(a, b) == 0);
}

/* Return 1 if a and b are alike but for the client's tools. */
static int
profile_equal_but_tools(const struct profile *a, const struct profile *b)
{
	return (strcmp(a->model, b->model) == 0 && a->tools == b->tools &&
	    a->max_tokens == b->max_tokens &&
	    profile_same(a->system_prompt, b->system_prompt) &&
	    profile_same(a->output_schema, b->output_schema));
}

/* Return 1 if a process started for a can run a job that wants b. */
int
profile_equal(const struct profile *a, const struct profile *b)
{
	return (profile_equal_but_tools(a, b) &&
	    profile_same(a->client_tools, b->client_tools));
}

/* The profile of warm processes. */
static void
pool_default_profile(struct profile *pr)
{
	memset(pr, 0, sizeof *pr);
	snprintf(pr->model, sizeof pr->model, "%s",
	    poold->cf->default_model != NULL ? poold->cf->default_model : "");
}

/* Record a latency sample in a ring. */
static void
pool_sample(uint32_t *ring, uint64_t *n, uint64_t ms)
{
	ring[*n % POOLD_SAMPLES] = ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
	(*n)++;
}

/* Return 1 if s is a model name we pass on: [A-Za-z0-9._:@/[]-], leading alnum. */
static int
pool_valid_model(const char *s)
{
	size_t	i, len = strlen(s);

	if (len == 0)
		return (1);
	if (len >= POOLD_MAX_MODEL || !((s[0] >= 'a' && s[0] <= 'z') ||
	    (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= '0' && s[0] <= '9')))
		return (0);
	for (i = 0; i < len; i++) {
		if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789._:@/[]-", s[i]) == NULL)
			return (0);
	}
	return (1);
}

/*
 * A message's blocks (text and base64 images) as the CLI is to get them,
 * rebuilt from the members it needs; in a message (not a tool result) a
 * text that starts with '/' gets a space in front (pool_start says why).
 * NULL if v has none that fit.
 */
static json_t *
pool_content(json_t *v, int message)
{
	static const char *const media[] = { "image/png", "image/jpeg",
	    "image/gif", "image/webp", NULL };
	json_t		*out, *b, *src, *nb;
	const char	*type, *m, *data, *text;
	size_t		 i, k;

	if (!json_is_array(v) || json_array_size(v) == 0 ||
	    json_array_size(v) > POOLD_MAX_BLOCKS || (out = json_array()) == NULL)
		return (NULL);
	json_array_foreach(v, i, b) {
		type = json_string_value(json_object_get(b, "type"));
		nb = NULL;
		if (type != NULL && strcmp(type, "text") == 0 &&
		    (text = json_string_value(json_object_get(b, "text"))) !=
		    NULL)
			nb = json_pack("{s:s, s:s+}", "type", "text", "text",
			    message && text[0] == '/' ? " " : "", text);
		else if (type != NULL && strcmp(type, "image") == 0) {
			src = json_object_get(b, "source");
			m = json_string_value(json_object_get(src, "media_type"));
			data = json_string_value(json_object_get(src, "data"));
			for (k = 0; m != NULL && media[k] != NULL &&
			    strcmp(media[k], m) != 0; k++)
				;
			if (m != NULL && media[k] != NULL && data != NULL &&
			    data[strspn(data, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "abcdefghijklmnopqrstuvwxyz0123456789+/=")] == '\0')
				nb = json_pack("{s:s, s:{s:s, s:s, s:s}}", "type",
				    "image", "source", "type", "base64",
				    "media_type", media[k], "data", data);
		}
		if (nb == NULL || json_array_append_new(out, nb) != 0) {
			json_decref(out);
			return (NULL);
		}
	}
	return (out);
}

/*
 * The client's tools, checked as the CLI needs them (one it cannot take
 * loses it the whole list): [{name, description, input_schema}], at most
 * POOLD_MAX_TOOLS, names unique, each schema an object of type "object".
 */
static int
pool_tools_ok(json_t *v)
{
	json_t	*t, *schema;
	size_t	 i, k;

	if (!json_is_array(v) || json_array_size(v) == 0 ||
	    json_array_size(v) > POOLD_MAX_TOOLS)
		return (0);
	json_array_foreach(v, i, t) {
		schema = json_object_get(t, "input_schema");
		if (!util_valid_tool_name(json_string_value(json_object_get(t,
		    "name"))) || !json_is_string(json_object_get(t,
		    "description")) || !json_is_object(schema) ||
		    !json_is_string(json_object_get(schema, "type")) ||
		    strcmp(json_string_value(json_object_get(schema, "type")),
		    "object") != 0)
			return (0);
		for (k = 0; k < i; k++) {
			if (strcmp(json_string_value(json_object_get(
			    json_array_get(v, k), "name")), json_string_value(
			    json_object_get(t, "name"))) == 0)
				return (0);
		}
	}
	return (1);
}

/* A turn's tool results: [{id, content: [blocks], is_error}]. */
static json_t *
pool_results(json_t *v)
{
	json_t	*out, *r, *c;
	size_t	 i;

	if (!json_is_array(v) || json_array_size(v) == 0 ||
	    json_array_size(v) > POOLD_MAX_TOOLS || (out = json_array()) == NULL)
		return (NULL);
	json_array_foreach(v, i, r) {
		if (!json_is_string(json_object_get(r, "id")) ||
		    (c = pool_content(json_object_get(r, "content"), 0)) == NULL ||
		    json_array_append_new(out, json_pack("{s:O, s:o, s:b}", "id",
		    json_object_get(r, "id"), "content", c, "is_error",
		    json_is_true(json_object_get(r, "is_error")))) != 0) {
			json_decref(out);
			return (NULL);
		}
	}
	return (out);
}

/* Copy an optional string member; fail if present and not a string. */
static int
pool_opt_str(json_t *msg, const char *key, const char **out)
{
	json_t	*v = json_object_get(msg, key);

	*out = NULL;
	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_string(v))
		return (-1);
	*out = json_string_value(v);
	return (0);
}

/*
 * Validate a job message and queue it; its frames go to sink.  Returns 0,
 * or -1 with *cause set and nothing queued (the caller answers
 * bad_request).
 */
int
pool_submit(const struct job_sink *sink, void *arg, json_t *msg, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct job		*job, *q;
	const char		*tenant, *key, *conv, *resume, *model, *sp, *text;
	const char		*id;
	json_t			*v, *stops, *content = NULL, *results = NULL;
	json_t			*client_tools = NULL;
	char			*tools_json = NULL, *schema_json = NULL;
	const char		*must;
	size_t			 i;
	long			 max_tokens = 0, timeout = cf->job_timeout_ms;
	long			 key_max = 0;
	int			 tools = 0, qlen = 0, tqlen = 0, no_queue = 0;

	if (pool_opt_str(msg, "tenant", &tenant) != 0 || tenant == NULL ||
	    !util_valid_tenant(tenant))
		return (*cause = strdup("tenant: missing or invalid"), -1);
	if (pool_opt_str(msg, "key", &key) != 0 ||
	    (key != NULL && !util_valid_tenant(key)))
		return (*cause = strdup("key: invalid"), -1);
	if (pool_opt_str(msg, "conversation", &conv) != 0 || conv == NULL ||
	    !util_valid_uuid(conv))
		return (*cause = strdup("conversation: missing or invalid"), -1);
	if (pool_opt_str(msg, "resume", &resume) != 0 ||
	    (resume != NULL && *resume != '\0' && !util_valid_uuid(resume)))
		return (*cause = strdup("resume: invalid"), -1);
	if (pool_opt_str(msg, "model", &model) != 0 ||
	    (model != NULL && !pool_valid_model(model)))
		return (*cause = strdup("model: invalid"), -1);
	if (pool_opt_str(msg, "system_prompt", &sp) != 0 ||
	    (sp != NULL && strlen(sp) > POOLD_MAX_PROMPT))
		return (*cause = strdup("system_prompt: invalid"), -1);
	if (pool_opt_str(msg, "message", &text) != 0 || text == NULL ||
	    *text == '\0')
		return (*cause = strdup("message: missing or empty"), -1);
	if (pool_opt_str(msg, "id", &id) != 0)
		return (*cause = strdup("id: invalid"), -1);
	if ((v = json_object_get(msg, "max_tokens")) != NULL &&
	    !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > 1000000)
			return (*cause = strdup("max_tokens: invalid"), -1);
		max_tokens = (long)json_integer_value(v);
	}
	if ((v = json_object_get(msg, "timeout_ms")) != NULL &&
	    !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 1)
			return (*cause = strdup("timeout_ms: invalid"), -1);
		if (json_integer_value(v) < timeout)
			timeout = (long)json_integer_value(v);
	}
	if ((v = json_object_get(msg, "key_max_jobs")) != NULL &&
	    !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 ||
		    json_integer_value(v) > 100000)
			return (*cause = strdup("key_max_jobs: invalid"), -1);
		key_max = (long)json_integer_value(v);
	}
	if ((v = json_object_get(msg, "queue")) != NULL && !json_is_null(v)) {
		if (!json_is_boolean(v))
			return (*cause = strdup("queue: invalid"), -1);
		no_queue = json_is_false(v);
	}
	if ((v = json_object_get(msg, "tools")) != NULL && !json_is_null(v)) {
		if (!json_is_boolean(v))
			return (*cause = strdup("tools: invalid"), -1);
		tools = json_is_true(v);
	}
	if ((v = json_object_get(msg, "content")) != NULL &&
	    !json_is_null(v) && (content = pool_content(v, 1)) == NULL)
		return (*cause = strdup("content: invalid"), -1);
	if ((v = json_object_get(msg, "client_tools")) != NULL &&
	    !json_is_null(v)) {
		if (!pool_tools_ok(v) || (tools_json = json_dumps(v,
		    JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
			json_decref(content);
			return (*cause = strdup("client_tools: invalid"), -1);
		}
		client_tools = v;
	}
	if ((v = json_object_get(msg, "tool_choice")) != NULL &&
	    !json_is_null(v) && (!json_is_string(v) ||
	    (strcmp(json_string_value(v), "*") != 0 &&
	    !util_valid_tool_name(json_string_value(v))))) {
		json_decref(content);
		free(tools_json);
		return (*cause = strdup("tool_choice: invalid"), -1);
	}
	must = json_string_value(v);
	if ((v = json_object_get(msg, "output_schema")) != NULL &&
	    !json_is_null(v) && (!json_is_object(v) || (schema_json =
	    json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS)) == NULL ||
	    strlen(schema_json) > POOLD_MAX_SCHEMA)) {
		json_decref(content);
		free(tools_json);
		free(schema_json);
		return (*cause = strdup("output_schema: invalid"), -1);
	}
	if ((v = json_object_get(msg, "tool_results")) != NULL &&
	    !json_is_null(v) && (results = pool_results(v)) == NULL) {
		json_decref(content);
		free(tools_json);
		free(schema_json);
		return (*cause = strdup("tool_results: invalid"), -1);
	}
	if ((stops = json_object_get(msg, "stop")) != NULL &&
	    !json_is_null(stops)) {
		if (!json_is_array(stops) ||
		    json_array_size(stops) > POOLD_MAX_STOPS)
			goto bad_stop;
		json_array_foreach(stops, i, v) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) > POOLD_MAX_STOP_LEN ||
			    strlen(json_string_value(v)) !=
			    json_string_length(v))
				goto bad_stop;
		}
	}

	if ((job = calloc(1, sizeof *job)) == NULL) {
		json_decref(content);
		json_decref(results);
		free(tools_json);
		free(schema_json);
		return (*cause = strdup("out of memory"), -1);
	}
	job->content = content;
	job->tool_results = results;
	job->client_tools = json_incref(client_tools);
	job->sink = sink;
	job->sink_arg = arg;
	job->state = JOB_NEW;
	job->accepted_at = poold_now();
	job->accepted_us = util_now_us();
	job->timeout_ms = timeout;
	snprintf(job->id, sizeof job->id, "%s", id != NULL ? id : "");
	snprintf(job->tenant, sizeof job->tenant, "%s", tenant);
	snprintf(job->key, sizeof job->key, "%s", key != NULL ? key : "");
	job->key_max = job->key[0] != '\0' ? key_max : 0;
	job->no_queue = no_queue;
	snprintf(job->conversation, sizeof job->conversation, "%s", conv);
	snprintf(job->resume, sizeof job->resume, "%s",
	    resume != NULL ? resume : "");
	pool_default_profile(&job->profile);
	if (model != NULL && *model != '\0')
		snprintf(job->profile.model, sizeof job->profile.model, "%s",
		    model);
	job->profile.tools = tools;
	job->profile.max_tokens = max_tokens;
	job->profile.client_tools = tools_json;
	job->profile.output_schema = schema_json;
	if (must != NULL && tools_json != NULL)
		snprintf(job->must_call, sizeof job->must_call, "%s", must);
	job->stop_hit = -1;
	if ((sp != NULL && *sp != '\0' &&
	    (job->profile.system_prompt = strdup(sp)) == NULL) ||
	    (job->message = strdup(text)) == NULL) {
		pool_job_free(job);
		return (*cause = strdup("out of memory"), -1);
	}
	for (i = 0; json_is_array(stops) && i < json_array_size(stops); i++) {
		if ((job->stops[job->nstops++] = strdup(json_string_value(
		    json_array_get(stops, i)))) == NULL) {
			pool_job_free(job);
			return (*cause = strdup("out of memory"), -1);
		}
	}
	poold->stats.jobs++;
	sink->started(arg, job);

	if (poold->draining) {
		pool_fail(job, PROTO_E_SHUTTING_DOWN,
		    "the pool is draining; retry shortly");
		return (0);
	}
	if (tools && (cf->sandbox != SANDBOX_BWRAP ||
	    cf->egress_socket == NULL)) {
		pool_fail(job, PROTO_E_UNAVAILABLE, "tools are not available: "
		    "ccgate-poold runs CLIs without its sandbox or its egress");
		return (0);
	}
	/* The upstream account refuses it: say so now, without a CLI. */
	if (pool_upstream_refuse(job))
		return (0);
	if (job->no_queue && pool_key_full(job)) {
		pool_fail(job, PROTO_E_KEY_BUSY, "this key runs its most "
		    "requests at once (max_concurrent_requests) and asked "
		    "not to queue");
		return (0);
	}
	/* No tenant fills the queue others wait in. */
	TAILQ_FOREACH(q, &poold->queue, entry) {
		qlen++;
		tqlen += strcmp(q->tenant, job->tenant) == 0;
	}
	if (cf->tenant_max_queued > 0 && tqlen >= cf->tenant_max_queued) {
		pool_fail(job, PROTO_E_TENANT_BUSY, "this tenant's turns fill "
		    "its share of the queue (tenant_max_queued)");
		return (0);
	}
	if (qlen >= cf->queue_max) {
		pool_fail(job, PROTO_E_BUSY, "the queue is full");
		return (0);
	}
	TAILQ_INSERT_TAIL(&poold->queue, job, entry);
	job->state = JOB_QUEUED;
	poold->submitting = job;
	pool_dispatch();
	poold->submitting = NULL;
	return (0);
bad_stop:
	json_decref(content);
	json_decref(results);
	free(tools_json);
	free(schema_json);
	return (*cause = strdup("stop: invalid"), -1);
}

/* Free a job that is in no list. */
static void
pool_job_free(struct job *job)
{
	int	i;

	for (i = 0; i < job->nstops; i++)
		free(job->stops[i]);
	profile_clear(&job->profile);
	free(job->message);
	json_decref(job->content);
	json_decref(job->client_tools);
	json_decref(job->tool_results);
	json_decref(job->calls);
	free(job->text);
	free(job);
}

/* Send a frame to the job's client; the job is over. */
static void
pool_finish(struct job *job, json_t *frame)
{
	json_t		*changes;
	uint64_t	 now = poold_now();

	if (job->state == JOB_QUEUED)
		TAILQ_REMOVE(&poold->queue, job, entry);
	if (job->proc != NULL) {
		job->proc->job = NULL;
		job->proc = NULL;
	}
	job->state = JOB_FINISHED;
	if (job->started_at != 0)
		pool_sample(poold->stats.dur, &poold->stats.ndur,
		    now - job->started_at);
	if (job->sink != NULL && frame != NULL) {
		/* Changes of the account's state ride on to be audited. */
		if ((changes = upstream_take()) != NULL &&
		    json_object_set(frame, "upstream_changes", changes) != 0) {
			upstream_untake(changes);
			json_decref(changes);
			changes = NULL;
		}
		if (job->sink->send(job->sink_arg, frame) != 0 &&
		    changes != NULL)
			upstream_untake(changes);
		json_decref(changes);
		job->sink->finished(job->sink_arg);
	}
	json_decref(frame);
	pool_job_free(job);
}

/*
 * End a job with an error frame; extra's fields (if any: upstream.c's
 * retry_after) go in it too.
 */
static void
pool_fail_extra(struct job *job, const char *code, const char *message,
    json_t *extra)
{
	json_t	*f;

	poold->stats.failed++;
	if (strcmp(code, PROTO_E_BUSY) == 0)
		poold->stats.busy++;
	else if (strcmp(code, PROTO_E_TIMEOUT) == 0)
		poold->stats.timeouts++;
	else if (strcmp(code, PROTO_E_CLI_FAILED) == 0)
		poold->stats.cli_failed++;
	else if (strcmp(code, PROTO_E_UPSTREAM) == 0)
		poold->stats.upstream_errors++;
	else if (strcmp(code, PROTO_E_RESUME_FAILED) == 0)
		poold->stats.resume_failed++;
	/* Its session may hold half of the turn: ccgate-fcgi forgets it. */
	if (job->proc != NULL && job->started_at != 0)
		job->proc->untrusted = 1;
	f = proto_new(PROTO_ERROR);
	if (f != NULL) {
		json_object_set_new(f, "code", json_string(code));
		json_object_set_new(f, "message", json_string(message));
		if (job->textlen > 0) {
			json_object_set_new(f, "text", json_stringn(job->text,
			    job->textlen));
			json_object_set_new(f, "incomplete", json_true());
		}
		if (job->session_id[0] != '\0')
			json_object_set_new(f, "session_id",
			    json_string(job->session_id));
		/* It reached a CLI: the upstream may have been asked. */
		if (job->started_at != 0)
			json_object_set_new(f, "ran", json_true());
		if (extra != NULL) {
			json_object_del(extra, "code");
			json_object_del(extra, "message");
			json_object_update(f, extra);
		}
	}
	pool_finish(job, f);
}

/* End a job with an error frame. */
static void
pool_fail(struct job *job, const char *code, const char *message)
{
	pool_fail_extra(job, code, message, NULL);
}

/*
 * Refuse a job at once, without a CLI, if the upstream account's state
 * says so (upstream.c).  Returns 1 if it was refused.
 */
static int
pool_upstream_refuse(struct job *job)
{
	json_t	*refusal;
	char	 code[64], msg[256];

	if (upstream_admit(job, &refusal))
		return (0);
	snprintf(code, sizeof code, "%s", refusal != NULL &&
	    json_string_value(json_object_get(refusal, "code")) != NULL ?
	    json_string_value(json_object_get(refusal, "code")) :
	    PROTO_E_UPSTREAM);
	snprintf(msg, sizeof msg, "%s", refusal != NULL &&
	    json_string_value(json_object_get(refusal, "message")) != NULL ?
	    json_string_value(json_object_get(refusal, "message")) :
	    "the upstream account is unavailable");
	pool_fail_extra(job, code, msg, refusal);
	json_decref(refusal);
	return (1);
}

/* The client of a job went away: cancel it and free its slot at once. */
void
pool_cancel(struct job *job)
{
	struct proc	*p = job->proc;

	poold->stats.cancelled++;
	job->sink = NULL;
	if (p != NULL) {
		log_info("job %s cancelled: killing CLI %ld", job->id,
		    (long)p->pid);
		proc_kill(p);
	}
	pool_finish(job, NULL);
	pool_dispatch();
}

/* Count live (not dying) processes in a state, optionally for a tenant. */
static int
pool_count(enum proc_state st, const char *tenant)
{
	struct proc	*p;
	int		 n = 0;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == st && (tenant == NULL ||
		    strcmp(p->tenant, tenant) == 0))
			n++;
	}
	return (n);
}

/*
 * Return 1 if the conversation cannot take a turn now: another of its
 * jobs is running, or its previous process is still exiting (and may
 * still be writing the transcript a resume would read).
 */
static int
pool_conversation_busy(const struct job *job)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (strcmp(p->tenant, job->tenant) != 0 ||
		    strcmp(p->conversation, job->conversation) != 0)
			continue;
		if ((p->job != NULL && p->job != job) || p->state == PROC_DYING)
			return (1);
	}
	return (0);
}

/* The most jobs job's key may run at once: the pool's or its own, 0: any. */
static long
pool_key_max(const struct job *job)
{
	long	max = poold->cf->key_max_jobs;

	if (job->key[0] == '\0')
		return (0);
	if (job->key_max > 0 && (max == 0 || job->key_max < max))
		max = job->key_max;
	return (max);
}

/* Count the running jobs of job's tenant and of its API key. */
static void
pool_running(const struct job *job, long *tenant, long *key)
{
	struct proc	*p;

	*tenant = *key = 0;
	TAILQ_FOREACH(p, &poold->procs, entry) {
		/* A turn that waits for tool results is still running. */
		if (p->parked && p->state == PROC_BUSY) {
			*tenant += strcmp(p->tenant, job->tenant) == 0;
			*key += job->key[0] != '\0' &&
			    strcmp(p->parked_key, job->key) == 0;
			continue;
		}
		if (p->job == NULL)
			continue;
		*tenant += strcmp(p->job->tenant, job->tenant) == 0;
		*key += job->key[0] != '\0' &&
		    strcmp(p->job->key, job->key) == 0;
	}
}

/* Whether the job's tenant, or its API key, already runs its most jobs. */
static int
pool_job_capped(const struct job *job)
{
	long	tenant, key, max = pool_key_max(job);

	pool_running(job, &tenant, &key);
	return (tenant >= poold->cf->tenant_max_jobs ||
	    (max > 0 && key >= max));
}

/*
 * Whether a job that may not queue finds its key at its limit: the key's
 * running jobs and those already queued ahead of it fill key_max.
 */
static int
pool_key_full(const struct job *job)
{
	struct job	*q;
	long		 tenant, key, max = pool_key_max(job);

	if (max == 0 || job->tool_results != NULL)
		return (0);
	pool_running(job, &tenant, &key);
	TAILQ_FOREACH(q, &poold->queue, entry)
		key += strcmp(q->key, job->key) == 0;
	return (key >= max);
}

/* Start job on p: write the user's turn to the CLI. */
static int
pool_start(struct job *job, struct proc *p, enum proc_origin origin)
{
	json_t		*line;
	char		*s, *cause = NULL;
	size_t		 len;
	uint64_t	 handed_us;
	int		 rc;

	if (origin == ORIGIN_WARM) {
		if (workspace_slot_bind(poold->cf->state_dir, p->slot,
		    job->tenant, job->conversation, &cause) != 0 ||
		    (p->egress[0] != '\0' && egress_bind(poold->cf->state_dir,
		    p->egress, job->tenant, &cause) != 0)) {
			log_warnx("bind warm CLI: %s", cause);
			free(cause);
			return (-1);
		}
		snprintf(p->tenant, sizeof p->tenant, "%s", job->tenant);
	}
	snprintf(p->conversation, sizeof p->conversation, "%s",
	    job->conversation);
	/*
	 * The CLI would run a message that starts with '/' as a command
	 * (--disable-slash-commands answers it instead of the model): a
	 * space in front makes it text, as the client meant it.
	 */
	if (job->content != NULL)
		line = json_pack("{s:s, s:{s:s, s:O}}", "type", "user",
		    "message", "role", "user", "content", job->content);
	else
		line = json_pack("{s:s, s:{s:s, s:s+}}", "type", "user",
		    "message", "role", "user", "content",
		    job->message[0] == '/' ? " " : "", job->message);
	if (line == NULL)
		return (-1);
	s = json_dumps(line, JSON_COMPACT);
	json_decref(line);
	if (s == NULL)
		return (-1);
	len = strlen(s);
	s[len] = '\n';	/* json_dumps' NUL becomes the line's end */
	/*
	 * The CLI's own time starts as the line reaches its pipe: the write
	 * wakes it, and it may run before this daemon does again.
	 */
	handed_us = util_now_us();
	rc = proc_write(p, s, len + 1);
	free(s);
	if (rc != 0)
		return (-1);

	TAILQ_REMOVE(&poold->queue, job, entry);
	job->handed_us = handed_us;
	job->waited = job != poold->submitting;
	job->state = JOB_RUNNING;
	job->proc = p;
	job->origin = origin;
	job->started_at = job->last_output_at = poold_now();
	snprintf(job->session_id, sizeof job->session_id, "%s", p->session_id);
	p->job = job;
	p->state = PROC_BUSY;
	p->last_used_at = job->started_at;
	poold->stats.by_origin[origin]++;
	pool_sample(poold->stats.qwait, &poold->stats.nqwait,
	    job->started_at - job->accepted_at);
	log_debug("job %s on CLI %ld (%s)", job->id, (long)p->pid,
	    origin == ORIGIN_WARM ? "warm" : origin == ORIGIN_BOUND ? "bound" :
	    origin == ORIGIN_RESUMED ? "resumed" : "spawned");
	return (0);
}

/* Find the idle process bound to job's conversation. */
static struct proc *
pool_find_bound(const struct job *job)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_BOUND &&
		    strcmp(p->tenant, job->tenant) == 0 &&
		    strcmp(p->conversation, job->conversation) == 0)
			return (p);
	}
	return (NULL);
}

/* Find a warm process of the given profile (oldest first). */
static struct proc *
pool_find_warm(const struct profile *pr)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_WARM && profile_equal(&p->profile, pr))
			return (p);
	}
	return (NULL);
}

/*
 * Kill the least recently used idle process to make room: a bound one
 * first (its session resumes later), then a warm one.  With tenant set,
 * only that tenant's bound processes are candidates.  Returns 1 if one
 * was killed.
 */
static int
pool_evict(const char *tenant)
{
	struct proc	*p, *lru = NULL;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_BOUND && (tenant == NULL ||
		    strcmp(p->tenant, tenant) == 0) && (lru == NULL ||
		    p->last_used_at < lru->last_used_at))
			lru = p;
	}
	if (lru == NULL && tenant == NULL) {
		TAILQ_FOREACH(p, &poold->procs, entry) {
			if (p->state == PROC_WARM) {
				lru = p;
				break;
			}
		}
	}
	/* Then the turn that has waited longest for its tool results. */
	if (lru == NULL) {
		TAILQ_FOREACH(p, &poold->procs, entry) {
			if (p->parked && p->state == PROC_BUSY &&
			    (tenant == NULL || strcmp(p->tenant, tenant) == 0) &&
			    (lru == NULL || p->parked_at < lru->parked_at))
				lru = p;
		}
		if (lru != NULL) {
			log_info("dropping CLI %ld, which waits for tool results, "
			    "to make room", (long)lru->pid);
			poold->stats.evicted++;
			proc_kill(lru);
			return (1);
		}
	}
	if (lru == NULL)
		return (0);
	log_info("evicting idle CLI %ld to make room", (long)lru->pid);
	poold->stats.evicted++;
	proc_stop(lru);
	return (1);
}

/*
 * Warm processes are a reserved share, not what is left over: with the
 * pool full and fewer than min_warm warm processes (and none on its way
 * out), the least recently used idle bound process goes (its conversation
 * resumes later, about as costly as the cold start a new conversation
 * saves), never one whose turn runs or waits for tool results.  One at a
 * time, ahead of demand: pool_dispatch spawns the warm one once it is
 * gone.
 */
static void
pool_reserve_warm(void)
{
	struct poold_config	*cf = poold->cf;
	struct proc		*p, *lru = NULL;
	long			 want = cf->min_warm;

	if (want > cf->min_instances)
		want = cf->min_instances;
	if (poold->nprocs < cf->max_instances ||
	    pool_count(PROC_WARM, NULL) >= want ||
	    pool_count(PROC_DYING, NULL) > 0)
		return;
	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_BOUND && p->job == NULL && !p->parked &&
		    (lru == NULL || p->last_used_at < lru->last_used_at))
			lru = p;
	}
	if (lru == NULL)
		return;
	log_info("stopping idle CLI %ld of conversation %s: the warm share "
	    "(min_warm) is short", (long)lru->pid, lru->conversation);
	poold->stats.evicted++;
	proc_stop(lru);
}

/* Try to place one queued job.  Returns 1 if it started (or ended). */
static int
pool_place(struct job *job, int *evicting)
{
	struct poold_config	*cf = poold->cf;
	struct profile		 def;
	struct proc		*p;
	char			*cause = NULL;
	int			 resume;

	if (pool_conversation_busy(job))
		return (0);
	/* The turn that waits for these tool results, or that never will. */
	if ((p = pool_find_parked(job)) != NULL) {
		/*
		 * Only the key whose turn it is, asking for what the turn
		 * runs with (the tool list aside), may carry it on: another
		 * key of the tenant, or another model, starts over (primed).
		 */
		if (job->tool_results != NULL &&
		    strcmp(job->key, p->parked_key) == 0 &&
		    profile_equal_but_tools(&p->profile, &job->profile)) {
			pool_resume_tools(job, p);
			return (1);
		}
		log_info("job %s: a new turn: the one waiting for tool results "
		    "on CLI %ld is dropped", job->id, (long)p->pid);
		proc_kill(p);
		return (0);
	}
	if (job->tool_results != NULL) {
		pool_fail(job, PROTO_E_RESUME_FAILED, "the turn that called the "
		    "tools is over");
		return (1);
	}
	if (pool_job_capped(job))
		return (0);

	if ((p = pool_find_bound(job)) != NULL) {
		/*
		 * The job names the session it continues, as the
		 * conversation's row does.  A process holding another one
		 * missed the turns that ran elsewhere (another node): it
		 * goes, and the turn resumes the row's session or is
		 * primed.  Naming none (a new session, primed from the
		 * stored turns), the job may still take a process whose
		 * turns all ended well (another turn of the conversation,
		 * sent before the first one's session was stored, sees no
		 * session yet), but not one that holds a failed turn's half.
		 */
		if (job->resume[0] != '\0' ? strcmp(p->session_id,
		    job->resume) != 0 : p->untrusted) {
			log_info("job %s: CLI %ld of conversation %s holds "
			    "session %s%s, the turn continues %s: stopping it",
			    job->id, (long)p->pid, job->conversation,
			    p->session_id, p->untrusted ? " (a turn failed)" :
			    "", job->resume[0] != '\0' ? job->resume :
			    "a new session");
			poold->stats.stale_sessions++;
			proc_stop(p);
			return (0);
		}
		if (profile_equal(&p->profile, &job->profile)) {
			if (pool_start(job, p, ORIGIN_BOUND) == 0)
				return (1);
			proc_kill(p);
			return (0);
		}
		/* The conversation changed profile: resume it in a new one. */
		proc_stop(p);
		return (0);
	}

	/* A tenant never holds more than tenant_max_processes live processes. */
	if (pool_count(PROC_BOUND, job->tenant) + pool_count(PROC_BUSY,
	    job->tenant) >= cf->tenant_max_processes) {
		if (pool_count(PROC_DYING, NULL) == 0)
			(void)pool_evict(job->tenant);
		return (0);
	}

	/*
	 * A warm process's HOME becomes the conversation's: only for one
	 * that has none yet (a primed conversation keeps its old one).
	 */
	pool_default_profile(&def);
	if (job->resume[0] == '\0' && profile_equal(&job->profile, &def) &&
	    !workspace_home_exists(cf->state_dir, job->tenant,
	    job->conversation) && (p = pool_find_warm(&def)) != NULL) {
		if (pool_start(job, p, ORIGIN_WARM) == 0)
			return (1);
		proc_kill(p);
		return (0);
	}

	if (poold->nprocs >= cf->max_instances) {
		if (!*evicting && pool_count(PROC_DYING, NULL) == 0)
			*evicting = pool_evict(NULL);
		return (0);
	}
	resume = job->resume[0] != '\0';
	p = proc_spawn(&job->profile, job->tenant, job->conversation,
	    resume ? job->resume : NULL, resume, pool_proc_line, pool_proc_gone,
	    &cause);
	if (p == NULL) {
		log_warnx("spawn CLI: %s", cause);
		pool_fail(job, PROTO_E_CLI_FAILED, cause != NULL ? cause :
		    "cannot start the CLI");
		free(cause);
		return (1);
	}
	p->state = PROC_BOUND;
	if (pool_start(job, p, resume ? ORIGIN_RESUMED : ORIGIN_SPAWNED) != 0) {
		proc_kill(p);
		pool_fail(job, PROTO_E_CLI_FAILED, "cannot write to the CLI");
	}
	return (1);
}

/*
 * Place what can be placed, in FIFO order (a job blocked only by its own
 * conversation or tenant does not hold up the others), then top up the
 * warm set.
 */
void
pool_dispatch(void)
{
	struct poold_config	*cf = poold->cf;
	struct profile		 def;
	struct job		*job, *next;
	struct proc		*p;
	char			*cause = NULL;
	int			 evicting = 0, waiting = 0;

	if (poold->stopping)
		return;
	for (job = TAILQ_FIRST(&poold->queue); job != NULL; job = next) {
		next = TAILQ_NEXT(job, entry);
		if (pool_upstream_refuse(job))
			continue;
		if (!pool_place(job, &evicting))
			waiting++;
	}
	if (waiting > 0 || poold->draining)
		return;
	if (poold_now() < poold->warm_backoff_until)
		return;
	pool_default_profile(&def);
	pool_reserve_warm();
	while (pool_count(PROC_WARM, NULL) < cf->min_instances &&
	    poold->nprocs < cf->max_instances) {
		p = proc_spawn(&def, NULL, NULL, NULL, 0, pool_proc_line,
		    pool_proc_gone, &cause);
		if (p == NULL) {
			log_warnx("spawn warm CLI: %s", cause);
			free(cause);
			break;
		}
		poold->stats.spawned_warm++;
	}
}

/* Append a delta to the job's text. */
static int
pool_append(struct job *job, const char *s)
{
	size_t	 n = strlen(s), ncap;
	char	*nb;

	if (job->textlen + n + 1 > job->textcap) {
		ncap = job->textcap ? job->textcap : 1024;
		while (ncap < job->textlen + n + 1)
			ncap *= 2;
		if ((nb = realloc(job->text, ncap)) == NULL)
			return (-1);
		job->text = nb;
		job->textcap = ncap;
	}
	memcpy(job->text + job->textlen, s, n + 1);
	job->textlen += n;
	return (0);
}

/* Put a blank line before a delta's text. */
static int
pool_paragraph(struct cli_msg *m)
{
	size_t	 n = strlen(m->text);
	char	*s;

	if ((s = malloc(n + 3)) == NULL)
		return (-1);
	memcpy(s, "\n\n", 2);
	memcpy(s + 2, m->text, n + 1);
	free(m->text);
	m->text = s;
	return (0);
}

/*
 * Where the job's text may be relayed to: the start of the first stop
 * sequence in it (*hit is then its index: the turn stops there), else its
 * end less the longest tail that could begin one.  No stop can begin in
 * what was relayed already: that much was held back until it could not.
 */
static size_t
pool_stop_scan(const struct job *job, int *hit)
{
	const char	*at, *best = NULL;
	size_t		 len, k, keep = 0, rest = job->textlen - job->sent;
	int		 i;

	*hit = -1;
	for (i = 0; i < job->nstops; i++) {
		len = strlen(job->stops[i]);
		at = memmem(job->text + job->sent, rest, job->stops[i], len);
		if (at != NULL && (best == NULL || at < best)) {
			best = at;
			*hit = i;
		}
		for (k = len - 1 < rest ? len - 1 : rest; k > keep; k--) {
			if (memcmp(job->text + job->textlen - k, job->stops[i],
			    k) == 0) {
				keep = k;
				break;
			}
		}
	}
	if (best != NULL)
		return ((size_t)(best - job->text));
	return (job->textlen - keep);
}

/*
 * Send the client the job's text from what it has up to upto.  Returns
 * -1 when the job is over (the client left, or memory ran out): the job
 * is freed then.
 */
static int
pool_relay(struct proc *p, struct job *job, size_t upto)
{
	json_t		*f;
	uint64_t	 us;
	int		 first = job->sent == 0;

	if (upto <= job->sent)
		return (0);
	if (first)
		pool_sample(poold->stats.ttfe, &poold->stats.nttfe,
		    poold_now() - job->started_at);
	/*
	 * The first text says how long the CLI itself took to it: from the
	 * turn reaching its stdin to this line read from its stdout, what a
	 * program driving it directly would wait.
	 */
	if ((f = proto_new(PROTO_EVENT)) == NULL ||
	    json_object_set_new(f, "text", json_stringn(job->text + job->sent,
	    upto - job->sent)) != 0 || (first && json_object_set_new(f,
	    "cli_us", json_integer((json_int_t)(p->read_us -
	    job->handed_us))) != 0)) {
		json_decref(f);
		proc_kill(p);
		pool_fail(job, PROTO_E_INTERNAL, "out of memory");
		return (-1);
	}
	job->sent = upto;
	if (job->sink->send(job->sink_arg, f) != 0) {
		json_decref(f);
		pool_cancel(job);
		return (-1);
	}
	json_decref(f);
	if (first && !job->waited) {
		/*
		 * The daemon's own share of the first event: from the frame to
		 * the CLI's stdin (less time spent queued) plus from reading
		 * the CLI's line to handing the client its frame.  Starting a
		 * process (fork, exec, its workspace) is counted apart.
		 */
		us = (job->handed_us - job->accepted_us) +
		    (job->sink->handed_us(job->sink_arg) - p->read_us);
		if (job->origin == ORIGIN_WARM || job->origin == ORIGIN_BOUND)
			pool_sample(poold->stats.overhead,
			    &poold->stats.noverhead, us);
		else
			pool_sample(poold->stats.spawn, &poold->stats.nspawn, us);
	}
	return (0);
}

/*
 * End the CLI's turn early (a stop sequence, or the upstream's max_tokens,
 * which the CLI would answer by asking the model to go on): an interrupt
 * on its stdin, as its SDK sends one.  The process lives on; its result
 * line ends the job, and what it prints until then is not the client's.
 */
static void
pool_halt(struct proc *p, struct job *job)
{
	static const char	line[] = "{\"type\":\"control_request\","
	    "\"request_id\":\"ccgate-halt\",\"request\":{\"subtype\":"
	    "\"interrupt\"}}\n";

	job->halted = 1;
	if (proc_write(p, line, sizeof line - 1) != 0) {
		log_warnx("CLI %ld: cannot interrupt its turn", (long)p->pid);
		proc_kill(p);
	}
}

/* The upstream's input usage of the turn's first answer, for the client. */
static void
pool_start_usage(struct job *job, const struct cli_msg *m)
{
	json_t	*f;

	job->usage_sent = 1;
	f = json_pack("{s:i, s:s, s:{s:I, s:I, s:I}}", "v", PROTO_VERSION,
	    "type", PROTO_EVENT, "usage", "input_tokens",
	    (json_int_t)m->input_tokens, "cache_read_input_tokens",
	    (json_int_t)m->cache_read_tokens, "cache_creation_input_tokens",
	    (json_int_t)m->cache_creation_tokens);
	if (f == NULL)
		return;		/* only bookkeeping: the turn goes on */
	if (job->sink->send(job->sink_arg, f) != 0) {
		json_decref(f);
		pool_cancel(job);
		return;
	}
	json_decref(f);
}

/*
 * The client's tools, as an MCP server of the "sdk" kind: the CLI sends
 * its JSON-RPC as control_request lines on stdout, and the answer goes
 * back as a control_response on its stdin.  A tools/call is the model
 * calling a client's tool: it waits, by its tool use id, for the client's
 * result (pool_answer_call), however long the client takes within
 * tool_park_ms.
 */
static void
pool_mcp_reply(struct proc *p, const char *request_id, json_t *reply)
{
	json_t	*line;
	char	*s;
	size_t	 len;

	line = json_pack("{s:s, s:{s:s, s:s, s:{s:o}}}", "type",
	    "control_response", "response", "subtype", "success",
	    "request_id", request_id, "response", "mcp_response", reply);
	if (line == NULL || (s = json_dumps(line, JSON_COMPACT)) == NULL) {
		json_decref(line);
		log_warnx("CLI %ld: out of memory for an MCP answer",
		    (long)p->pid);
		proc_kill(p);
		return;
	}
	json_decref(line);
	len = strlen(s);
	s[len] = '\n';
	if (proc_write(p, s, len + 1) != 0)
		proc_kill(p);
	free(s);
}

/* Answer the CLI's parked tools/call with the client's result r. */
static void
pool_answer_call(struct proc *p, json_t *call, json_t *r)
{
	json_t		*content, *b, *src;
	const char	*type;
	size_t		 i;

	if ((content = json_array()) == NULL)
		return;
	json_array_foreach(json_object_get(r, "content"), i, b) {
		type = json_string_value(json_object_get(b, "type"));
		src = json_object_get(b, "source");
		if (type != NULL && strcmp(type, "image") == 0)
			json_array_append_new(content, json_pack("{s:s, s:O, "
			    "s:O}", "type", "image", "data", json_object_get(src,
			    "data"), "mimeType", json_object_get(src,
			    "media_type")));
		else
			json_array_append_new(content, json_pack("{s:s, s:O}",
			    "type", "text", "text", json_object_get(b, "text")));
	}
	pool_mcp_reply(p, json_string_value(json_object_get(call,
	    "request_id")), json_pack("{s:s, s:O, s:{s:o, s:b}}", "jsonrpc",
	    "2.0", "id", json_object_get(call, "rpc_id"), "result", "content",
	    content, "isError", json_is_true(json_object_get(r, "is_error"))));
}

/* One MCP message from the CLI for the client's tools. */
static void
pool_mcp(struct proc *p, struct cli_msg *m)
{
	const char	*method = json_string_value(json_object_get(m->json,
			    "method"));
	json_t		*id = json_object_get(m->json, "id");
	json_t		*params = json_object_get(m->json, "params");
	json_t		*tools, *list, *t, *r;
	const char	*tuid, *pv;
	size_t		 i;

	/*
	 * Only a process given client tools speaks to this server, and only
	 * a handful of times but for calls: anything else is not the CLI
	 * we started (a CLI is hostile input), and is killed.
	 */
	if (p->profile.client_tools == NULL || (method != NULL &&
	    strcmp(method, "tools/call") != 0 && ++p->mcp_asked > 32)) {
		log_warnx("CLI %ld: unexpected MCP requests: killing it",
		    (long)p->pid);
		proc_kill(p);
		return;
	}
	if (method == NULL || id == NULL) {
		/* A notification: the SDK protocol wants an answer anyway. */
		pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:{}, s:i}",
		    "jsonrpc", "2.0", "result", "id", 0));
		return;
	}
	if (strcmp(method, "initialize") == 0) {
		pv = json_string_value(json_object_get(params,
		    "protocolVersion"));
		pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:O, s:{s:s, "
		    "s:{s:{s:b}}, s:{s:s, s:s}}}", "jsonrpc", "2.0", "id", id,
		    "result", "protocolVersion", pv != NULL ? pv : "2025-06-18",
		    "capabilities", "tools", "listChanged", 0, "serverInfo",
		    "name", "ccgate", "version", PACKAGE_VERSION));
	} else if (strcmp(method, "tools/list") == 0) {
		/*
		 * Read-only, as far as the CLI knows: then it calls them all
		 * at once, and the client gets every call of an answer.
		 */
		tools = p->profile.client_tools != NULL ?
		    json_loads(p->profile.client_tools, 0, NULL) : NULL;
		list = json_array();
		json_array_foreach(tools, i, t) {
			json_array_append_new(list, json_pack("{s:O, s:O, s:O, "
			    "s:{s:b}}", "name", json_object_get(t, "name"),
			    "description", json_object_get(t, "description"),
			    "inputSchema", json_object_get(t, "input_schema"),
			    "annotations", "readOnlyHint", 1));
		}
		json_decref(tools);
		pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:O, s:{s:o}}",
		    "jsonrpc", "2.0", "id", id, "result", "tools", list));
	} else if (strcmp(method, "tools/call") == 0) {
		tuid = json_string_value(json_object_get(json_object_get(params,
		    "_meta"), "claudecode/toolUseId"));
		if (tuid == NULL) {
			pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:O, "
			    "s:{s:[{s:s, s:s}], s:b}}", "jsonrpc", "2.0", "id", id,
			    "result", "content", "type", "text", "text",
			    "ccgate: a call without its tool use id", "isError",
			    1));
			return;
		}
		/* A CLI is hostile input: more calls than tools is not a model. */
		if (json_object_size(p->waiting) >= POOLD_MAX_TOOLS) {
			log_warnx("CLI %ld: too many tool calls waiting: "
			    "killing it", (long)p->pid);
			proc_kill(p);
			return;
		}
		if ((p->waiting == NULL && (p->waiting = json_object()) ==
		    NULL) || json_object_set_new(p->waiting, tuid, json_pack(
		    "{s:s, s:O}", "request_id", m->request_id, "rpc_id", id)) !=
		    0) {
			proc_kill(p);
			return;
		}
		/* Its result may have come first. */
		if ((r = json_object_get(p->held, tuid)) != NULL) {
			pool_answer_call(p, json_object_get(p->waiting, tuid), r);
			json_object_del(p->waiting, tuid);
			json_object_del(p->held, tuid);
		}
	} else if (strcmp(method, "ping") == 0)
		pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:O, s:{}}",
		    "jsonrpc", "2.0", "id", id, "result"));
	else
		pool_mcp_reply(p, m->request_id, json_pack("{s:s, s:O, s:{s:i, "
		    "s:s}}", "jsonrpc", "2.0", "id", id, "error", "code", -32601,
		    "message", "method not found"));
}

/* A done frame's usage. */
static json_t *
pool_usage(long long in, long long out, long long cache_read,
    long long cache_creation)
{
	return (json_pack("{s:I, s:I, s:I, s:I}", "input_tokens",
	    (json_int_t)in, "output_tokens", (json_int_t)out,
	    "cache_read_input_tokens", (json_int_t)cache_read,
	    "cache_creation_input_tokens", (json_int_t)cache_creation));
}

/*
 * Keep the calls of calls (an answer's tool_use) that are the client's:
 * to a tool the process was started with (a resumed job's own request
 * may list others).  -1 when memory ran out, or past POOLD_MAX_TOOLS.
 */
static int
pool_client_calls(struct proc *p, struct job *job, json_t *calls)
{
	json_t		*tools, *c, *t;
	const char	*name;
	size_t		 i, k;
	int		 rc = 0;

	if (p->profile.client_tools == NULL ||
	    (tools = json_loads(p->profile.client_tools, 0, NULL)) == NULL)
		return (0);
	json_array_foreach(calls, i, c) {
		/*
		 * With the CLI's own tools on, the client's keep their MCP
		 * prefix (proc_envp): a client's "Bash" is not the CLI's.
		 */
		name = json_string_value(json_object_get(c, "name"));
		if (p->profile.tools) {
			if (strncmp(name, POOL_MCP_PREFIX,
			    sizeof POOL_MCP_PREFIX - 1) != 0)
				continue;
			name += sizeof POOL_MCP_PREFIX - 1;
		}
		json_array_foreach(tools, k, t) {
			if (strcmp(json_string_value(json_object_get(t, "name")),
			    name) != 0)
				continue;
			if ((job->calls == NULL && (job->calls = json_array()) ==
			    NULL) || json_array_size(job->calls) >=
			    POOLD_MAX_TOOLS || json_array_append_new(job->calls,
			    json_pack("{s:O, s:s, s:O}", "id", json_object_get(c,
			    "id"), "name", name, "input", json_object_get(c,
			    "input"))) != 0)
				rc = -1;
			break;
		}
	}
	json_decref(tools);
	return (rc);
}

/*
 * The model called the client's tools: the job ends with the calls, and
 * the process waits, parked, with the turn open, for the client's next
 * request to bring their results (pool_resume_tools).
 */
static void
pool_park(struct proc *p, struct job *job)
{
	json_t	*f, *c;
	size_t	 i;

	if (pool_relay(p, job, job->textlen) != 0)
		return;
	json_decref(p->asked);
	p->asked = json_array();
	json_array_foreach(job->calls, i, c) {
		json_array_append(p->asked, json_object_get(c, "id"));
	}
	f = json_pack("{s:i, s:s, s:s%, s:s, s:o, s:f, "
	    "s:I, s:s, s:s, s:O, s:{s:I, s:s, s:i, s:b}}", "v", PROTO_VERSION,
	    "type", PROTO_DONE, "text", job->text ? job->text : "",
	    job->textlen, "session_id", job->session_id, "usage",
	    pool_usage(job->s_in, job->s_out, job->s_cache_read,
	    job->s_cache_creation), "cost_usd", 0.0, "duration_ms",
	    (json_int_t)(poold_now() - job->started_at), "model",
	    job->profile.model, "stop_reason", "tool_use", "tool_calls",
	    job->calls, "process", "pid", (json_int_t)(proc_cli_pid(p) != 0 ?
	    proc_cli_pid(p) : p->pid), "origin", job->origin == ORIGIN_BOUND ?
	    "bound" : job->origin == ORIGIN_RESUMED ? "resumed" : "spawned",
	    "turns", (int)p->turns, "parked", 1);
	if (f == NULL || p->asked == NULL) {
		json_decref(f);
		proc_kill(p);
		pool_fail(job, PROTO_E_INTERNAL, "out of memory");
		return;
	}
	p->parked = 1;
	p->parked_at = poold_now();
	snprintf(p->parked_key, sizeof p->parked_key, "%s", job->key);
	p->last_used_at = p->parked_at;
	poold->stats.succeeded++;
	pool_finish(job, f);
	pool_dispatch();
}

/*
 * Carry the client's tool results to the parked turn of p, and run job
 * (the client's request that brought them) on what the turn does next.
 * A call the client did not answer gets an error result: the model
 * learns that, and the turn goes on.
 */
static void
pool_resume_tools(struct job *job, struct proc *p)
{
	json_t		*r, *id;
	const char	*k;
	size_t		 i, j;
	int		 found;

	TAILQ_REMOVE(&poold->queue, job, entry);
	job->handed_us = util_now_us();
	job->waited = job != poold->submitting;
	job->state = JOB_RUNNING;
	job->proc = p;
	job->origin = ORIGIN_BOUND;
	job->tool_turn = 1;
	job->usage_sent = 1;	/* the turn's input was the first job's */
	job->started_at = job->last_output_at = poold_now();
	snprintf(job->session_id, sizeof job->session_id, "%s", p->session_id);
	p->job = job;
	p->parked = 0;
	p->last_used_at = job->started_at;
	poold->stats.by_origin[ORIGIN_BOUND]++;
	if (p->held == NULL)
		p->held = json_object();
	json_array_foreach(p->asked, i, id) {
		k = json_string_value(id);
		found = 0;
		json_array_foreach(job->tool_results, j, r) {
			if (strcmp(json_string_value(json_object_get(r, "id")),
			    k) == 0) {
				found = 1;
				break;
			}
		}
		if (!found)
			r = json_pack("{s:s, s:[{s:s, s:s}], s:b}", "id", k,
			    "content", "type", "text", "text", "the client sent "
			    "no result for this call", "is_error", 1);
		else
			json_incref(r);
		if (r == NULL)
			continue;
		if (json_object_get(p->waiting, k) != NULL) {
			pool_answer_call(p, json_object_get(p->waiting, k), r);
			json_object_del(p->waiting, k);
		} else
			json_object_set(p->held, k, r);
		json_decref(r);
	}
	json_decref(p->asked);
	p->asked = NULL;
	log_debug("job %s resumes the tool turn on CLI %ld", job->id,
	    (long)p->pid);
}

/* The process of job's conversation whose turn waits for tool results. */
static struct proc *
pool_find_parked(const struct job *job)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->parked && p->state == PROC_BUSY &&
		    strcmp(p->tenant, job->tenant) == 0 &&
		    strcmp(p->conversation, job->conversation) == 0)
			return (p);
	}
	return (NULL);
}

/*
 * The client required a tool call (tool_choice) and the model answered
 * without one: tell it, in the same turn's session, and go on (twice at
 * most).  Returns 1 if the job goes on.
 */
static int
pool_must_call(struct proc *p, struct job *job, const struct cli_msg *m)
{
	json_t	*line;
	char	*s, what[160];
	size_t	 len;
	int	 rc;

	if (job->must_call[0] == '\0' || job->halted || m->is_error ||
	    json_array_size(job->calls) > 0 || job->must_asked >= 2)
		return (0);
	job->must_asked++;
	if (strcmp(job->must_call, "*") == 0)
		snprintf(what, sizeof what, "one of the client's tools");
	else
		snprintf(what, sizeof what, "the tool %s%s", p->profile.tools ?
		    POOL_MCP_PREFIX : "", job->must_call);
	line = json_pack("{s:s, s:{s:s, s:[{s:s, s:s+++}]}}", "type", "user",
	    "message", "role", "user", "content", "type", "text", "text",
	    "<system-reminder>The client requires a tool call: call ", what,
	    " now, with no other text.", "</system-reminder>");
	if (line == NULL || (s = json_dumps(line, JSON_COMPACT)) == NULL) {
		json_decref(line);
		return (0);
	}
	json_decref(line);
	len = strlen(s);
	s[len] = '\n';
	rc = proc_write(p, s, len + 1);
	free(s);
	if (rc != 0)
		return (0);
	job->stop_reason[0] = '\0';
	log_debug("job %s: no tool call yet: asking for %s", job->id, what);
	return (1);
}

/* A turn ended with a result line. */
static void
pool_result(struct proc *p, struct job *job, struct cli_msg *m)
{
	struct poold_config	*cf = poold->cf;
	json_t			*f, *usage, *proc, *extra;
	uint64_t		 now = poold_now();
	char			 msg[512], ecode[64];
	const char		*code = NULL;

	if (pool_must_call(p, job, m))
		return;
	if (m->session_id[0] != '\0' && util_valid_uuid(m->session_id))
		snprintf(job->session_id, sizeof job->session_id, "%s",
		    m->session_id);
	p->turns++;
	p->last_used_at = now;
	p->state = PROC_BOUND;
	snprintf(p->session_id, sizeof p->session_id, "%s", job->session_id);

	/* An interrupted turn ends in error: it ended where it was meant to. */
	if (m->is_error && !job->halted) {
		if (job->origin == ORIGIN_RESUMED && job->textlen == 0 &&
		    strcmp(m->subtype, "error_during_execution") == 0) {
			proc_kill(p);
			pool_fail(job, PROTO_E_RESUME_FAILED,
			    "the CLI session could not be resumed");
			return;
		}
		/* The upstream refused it (429, 529, 401): upstream.c. */
		if ((extra = upstream_failed(job, m, &code)) != NULL) {
			snprintf(msg, sizeof msg, "%s", json_string_value(
			    json_object_get(extra, "message")));
			snprintf(ecode, sizeof ecode, "%s", code);
			pool_fail_extra(job, ecode, msg, extra);
			json_decref(extra);
			return;
		}
		snprintf(msg, sizeof msg, "%s", m->text != NULL ? m->text :
		    "the CLI reported an error");
		pool_fail(job, PROTO_E_UPSTREAM, msg);
		return;
	}
	/* Structured output: the answer is its JSON, in one event. */
	if (job->profile.output_schema != NULL) {
		char	*js;

		if (m->json == NULL || (js = json_dumps(m->json, JSON_COMPACT |
		    JSON_ENCODE_ANY)) == NULL) {
			pool_fail(job, PROTO_E_UPSTREAM, "the model gave no "
			    "structured output");
			return;
		}
		job->textlen = 0;
		if (pool_append(job, js) != 0) {
			free(js);
			pool_fail(job, PROTO_E_INTERNAL, "out of memory");
			return;
		}
		free(js);
		snprintf(job->stop_reason, sizeof job->stop_reason, "end_turn");
		if (pool_relay(p, job, job->textlen) != 0)
			return;
	} else if (job->textlen == 0 && !job->halted && !job->tool_turn &&
	    m->text != NULL) {
		if (pool_append(job, m->text) != 0) {
			pool_fail(job, PROTO_E_INTERNAL, "out of memory");
			return;
		}
	} else if (!job->halted && pool_relay(p, job, job->textlen) != 0)
		return;		/* what was held back for a stop that never came */

	f = proto_new(PROTO_DONE);
	/*
	 * A turn that waited for tool results was billed in parts, and one
	 * told to call a tool ran more than one CLI turn: each job says what
	 * its own upstream answers cost.
	 */
	if (job->tool_turn || job->must_asked > 0)
		usage = pool_usage(job->s_in, job->s_out, job->s_cache_read,
		    job->s_cache_creation);
	else
		usage = pool_usage(m->input_tokens, m->output_tokens,
		    m->cache_read_tokens, m->cache_creation_tokens);
	proc = json_pack("{s:I, s:s, s:i}", "pid",
	    (json_int_t)(proc_cli_pid(p) != 0 ? proc_cli_pid(p) : p->pid),
	    "origin", job->origin == ORIGIN_WARM ? "warm" :
	    job->origin == ORIGIN_BOUND ? "bound" :
	    job->origin == ORIGIN_RESUMED ? "resumed" : "spawned",
	    "turns", (int)p->turns);
	if (f == NULL || usage == NULL || proc == NULL) {
		json_decref(f);
		json_decref(usage);
		json_decref(proc);
		pool_fail(job, PROTO_E_INTERNAL, "out of memory");
		return;
	}
	json_object_set_new(f, "text", json_stringn(job->text ? job->text : "",
	    job->textlen));
	json_object_set_new(f, "session_id", json_string(job->session_id));
	json_object_set_new(f, "usage", usage);
	json_object_set_new(f, "cost_usd", json_real(m->cost_usd));
	json_object_set_new(f, "duration_ms",
	    json_integer((json_int_t)(now - job->started_at)));
	json_object_set_new(f, "cli_duration_ms",
	    json_integer((json_int_t)m->duration_ms));
	json_object_set_new(f, "model", json_string(job->profile.model));
	json_object_set_new(f, "stop_reason", json_string(job->stop_reason[0] !=
	    '\0' ? job->stop_reason : m->stop_reason[0] != '\0' ?
	    m->stop_reason : "end_turn"));
	if (job->stop_hit >= 0)
		json_object_set_new(f, "stop_sequence",
		    json_string(job->stops[job->stop_hit]));
	json_object_set_new(f, "process", proc);
	poold->stats.succeeded++;
	pool_finish(job, f);

	if ((cf->max_messages_per_instance > 0 &&
	    p->turns >= (unsigned)cf->max_messages_per_instance) ||
	    (cf->max_instance_age_ms > 0 &&
	    now - p->started_at >= (uint64_t)cf->max_instance_age_ms)) {
		log_info("recycling CLI %ld after %u turns", (long)p->pid,
		    p->turns);
		poold->stats.recycled++;
		proc_stop(p);
	}
	pool_dispatch();
}

/*
 * Check the model a CLI says it runs a turn with (each turn's system/init
 * line) against the job's: a CLI that was talked into another model (or
 * went there by itself) ends the turn with an error, never billed as the
 * model the key may use.  A model given as an alias ("sonnet") is checked
 * against what the process first said it resolved to.
 */
static void
pool_model_check(struct proc *p, struct job *job, const char *model)
{
	const char	*want = job->profile.model;
	char		 msg[512];

	if (model[0] == '\0' || want[0] == '\0')
		return;
	if (p->model_seen[0] == '\0' && (strncmp(want, "claude-", 7) != 0 ||
	    strcmp(model, want) == 0)) {
		snprintf(p->model_seen, sizeof p->model_seen, "%s", model);
		return;
	}
	if (strcmp(model, p->model_seen) == 0)
		return;
	log_warnx("job %s on CLI %ld: the CLI runs %s, not %s: killing it",
	    job->id, (long)p->pid, model, want);
	snprintf(msg, sizeof msg, "the CLI reported model %s, not the "
	    "conversation's %s; the turn was stopped", model, want);
	proc_kill(p);
	pool_fail(job, PROTO_E_MODEL_MISMATCH, msg);
}

/* One stdout line from a CLI. */
static void
pool_proc_line(struct proc *p, const char *line, size_t len)
{
	struct job	*job = p->job;
	struct cli_msg	 m;
	char		*cause = NULL;
	uint64_t	 now;
	size_t		 upto;
	int		 hit;

	if (p->state == PROC_DYING)
		return;
	if (cli_parse_line(line, len, &m, &cause) != 0) {
		log_debug("CLI %ld: %s", (long)p->pid, cause);
		free(cause);
		return;
	}
	/* The client's tools' MCP, with or without a job (at start-up). */
	if (m.kind == CLI_CONTROL) {
		pool_mcp(p, &m);
		cli_msg_clear(&m);
		return;
	}
	if (job == NULL) {
		/*
		 * A turn that waits for tool results asks nothing of the model
		 * until they come: a CLI that goes on runs unbilled and
		 * unwatched, so it is stopped.
		 */
		if (p->parked && (m.kind == CLI_MESSAGE_START ||
		    m.kind == CLI_DELTA || m.kind == CLI_TOOL_USE)) {
			log_warnx("CLI %ld: model output while it waits for tool "
			    "results: killing it", (long)p->pid);
			proc_kill(p);
		}
		/* A parked turn that ended without the results: it is over. */
		if (p->parked && m.kind == CLI_RESULT) {
			log_info("CLI %ld: its turn ended while it waited for "
			    "tool results", (long)p->pid);
			p->parked = 0;
			p->state = PROC_BOUND;
			p->last_used_at = poold_now();
		}
		cli_msg_clear(&m);
		return;
	}
	now = poold_now();
	job->last_output_at = now;
	if (!job->got_output) {
		job->got_output = 1;
		job->first_event_at = now;
	}
	switch (m.kind) {
	case CLI_INIT:
		if (util_valid_uuid(m.session_id)) {
			snprintf(job->session_id, sizeof job->session_id, "%s",
			    m.session_id);
			snprintf(p->session_id, sizeof p->session_id, "%s",
			    m.session_id);
		}
		pool_model_check(p, job, m.model);
		break;
	case CLI_TEXT_START:
		/*
		 * A turn in which the model called a tool has a text block
		 * per model request: a blank line keeps them apart.
		 */
		job->new_block = job->textlen > 0;
		break;
	case CLI_MESSAGE_START:
		job->s_in += m.input_tokens;
		job->s_cache_read += m.cache_read_tokens;
		job->s_cache_creation += m.cache_creation_tokens;
		if (!job->usage_sent && !job->halted)
			pool_start_usage(job, &m);
		break;
	case CLI_TOOL_USE:
		if (!job->halted && pool_client_calls(p, job, m.json) != 0) {
			proc_kill(p);
			pool_fail(job, PROTO_E_INTERNAL, "too many tool calls, or "
			    "out of memory");
		}
		break;
	case CLI_STOP:
		job->s_out += m.output_tokens;
		if (job->halted)
			break;
		snprintf(job->stop_reason, sizeof job->stop_reason, "%s",
		    m.stop_reason);
		if (strcmp(m.stop_reason, "max_tokens") == 0) {
			/* What was held for a stop that never came is the
			 * client's: the answer ends here. */
			if (pool_relay(p, job, job->textlen) != 0)
				break;
			pool_halt(p, job);
		} else if (strcmp(m.stop_reason, "tool_use") == 0 &&
		    json_array_size(job->calls) > 0)
			pool_park(p, job);
		break;
	case CLI_CONTROL:
		break;
	case CLI_DELTA:
		/* With an output schema the answer is the structured output. */
		if (job->halted || job->profile.output_schema != NULL)
			break;
		if (job->new_block && pool_paragraph(&m) != 0) {
			proc_kill(p);
			pool_fail(job, PROTO_E_INTERNAL, "out of memory");
			break;
		}
		job->new_block = 0;
		if (pool_append(job, m.text) != 0) {
			proc_kill(p);
			pool_fail(job, PROTO_E_INTERNAL, "out of memory");
			break;
		}
		upto = pool_stop_scan(job, &hit);
		if (pool_relay(p, job, upto) != 0)
			break;
		if (hit >= 0) {
			/* What the client saw is the answer: it ends here. */
			job->stop_hit = hit;
			job->textlen = upto;
			job->text[upto] = '\0';
			snprintf(job->stop_reason, sizeof job->stop_reason,
			    "stop_sequence");
			pool_halt(p, job);
		}
		break;
	case CLI_RETRY:
		job->retries_seen++;
		job->last_retry_status = m.error_status;
		job->retry_ms = m.retry_ms;
		break;
	case CLI_RATE_LIMIT:
		/* The upstream's headers, as the CLI read them. */
		if (m.rejected && m.resets_at > 0)
			job->resets_at = m.resets_at;
		break;
	case CLI_RESULT:
		pool_result(p, job, &m);
		break;
	case CLI_OTHER:
		break;
	}
	cli_msg_clear(&m);
}

/* A process is gone (exited and at EOF): end its job, free it. */
static void
pool_proc_gone(struct proc *p)
{
	struct job	*job = p->job;
	char		 msg[POOLD_STDERR_KEEP + 128], how[64], *nl;
	const char	*tail;

	TAILQ_REMOVE(&poold->procs, p, entry);
	poold->nprocs--;
	if (p->crashed && p->turns == 0 && job == NULL) {
		/* A warm process that died unused: do not respawn in a loop. */
		if (poold->warm_failures < 7)
			poold->warm_failures++;
		poold->warm_backoff_until = poold_now() +
		    (250ULL << poold->warm_failures);
		log_warnx("warm CLI %ld died at start (status %d): %s",
		    (long)p->pid, p->status, p->errtail);
	} else if (p->turns > 0)
		poold->warm_failures = 0;
	if (job != NULL) {
		job->proc = NULL;
		p->job = NULL;
		if (poold->stopping && poold_now() >= poold->stop_deadline) {
			/* Killed by the stop: the client may try again. */
			pool_fail(job, PROTO_E_SHUTTING_DOWN, "the pool stopped "
			    "before the turn finished; retry shortly");
		} else if (job->origin == ORIGIN_RESUMED && job->textlen == 0 &&
		    strstr(p->errtail, "No conversation found") != NULL) {
			pool_fail(job, PROTO_E_RESUME_FAILED,
			    "the CLI session could not be resumed");
		} else if (job->textlen == 0 && job->attempts == 0 &&
		    !poold->stopping) {
			/* Died before any answer: once more, elsewhere. */
			log_warnx("CLI %ld died before answering; retrying job",
			    (long)p->pid);
			poold->stats.retried++;
			job->attempts++;
			job->state = JOB_QUEUED;
			job->got_output = 0;
			/* Nothing of the first attempt carries over. */
			job->halted = job->new_block = 0;
			job->stop_reason[0] = '\0';
			job->stop_hit = -1;
			job->sent = 0;
			json_decref(job->calls);
			job->calls = NULL;
			job->s_in = job->s_out = job->s_cache_read =
			    job->s_cache_creation = 0;
			TAILQ_INSERT_HEAD(&poold->queue, job, entry);
		} else {
			tail = p->errtail;
			while ((nl = strrchr(tail, '\n')) != NULL &&
			    nl[1] == '\0')
				*nl = '\0';
			if ((nl = strrchr(tail, '\n')) != NULL)
				tail = nl + 1;
			proc_exit_text(p, how, sizeof how);
			snprintf(msg, sizeof msg, "the CLI exited during the "
			    "turn (%s)%s%s", how, *tail != '\0' ? ": " : "",
			    tail);
			pool_fail(job, PROTO_E_CLI_FAILED, msg);
		}
	}
	if (p->delete_home && workspace_delete_home(poold->cf->state_dir,
	    p->tenant, p->conversation) < 0)
		log_warnx("cannot remove the folder of deleted conversation %s",
		    p->conversation);
	proc_free(p);
	if (poold->stopping && poold->nprocs == 0)
		loop_stop(poold->loop);
	pool_dispatch();
}

/* Time limits, idle and age recycling, health checks; once per tick. */
void
pool_tick(void *arg)
{
	struct poold_config	*cf = poold->cf;
	struct job		*job, *jnext;
	struct proc		*p, *pnext;
	uint64_t		 now;
	int			 excess;

	proc_reap();
	now = poold_now();
	proc_tick(now);
	upstream_tick();
	for (job = TAILQ_FIRST(&poold->queue); job != NULL; job = jnext) {
		jnext = TAILQ_NEXT(job, entry);
		if (now - job->accepted_at >= (uint64_t)cf->queue_max_wait_ms)
			pool_fail(job, PROTO_E_BUSY,
			    "no CLI process became free in time");
	}
	for (p = TAILQ_FIRST(&poold->procs); p != NULL; p = pnext) {
		pnext = TAILQ_NEXT(p, entry);
		if ((job = p->job) != NULL) {
			const char	*why = NULL;

			if (now - job->started_at >= (uint64_t)job->timeout_ms)
				why = "the job passed its time limit";
			else if (!job->got_output && now - job->started_at >=
			    (uint64_t)cf->first_event_timeout_ms)
				why = "the CLI produced no output in time";
			else if (job->got_output && now - job->last_output_at >=
			    (uint64_t)cf->stall_timeout_ms)
				why = "the CLI stalled";
			if (why != NULL) {
				log_warnx("job %s on CLI %ld: %s", job->id,
				    (long)p->pid, why);
				proc_kill(p);
				pool_fail(job, PROTO_E_TIMEOUT, why);
			}
			continue;
		}
		if (p->parked && now - p->parked_at >=
		    (uint64_t)cf->tool_park_ms) {
			log_info("CLI %ld: no tool results in %ld ms: its turn "
			    "is dropped", (long)p->pid, cf->tool_park_ms);
			proc_kill(p);
			continue;
		}
		if (p->state == PROC_BOUND && now - p->last_used_at >=
		    (uint64_t)cf->idle_timeout_ms) {
			log_debug("CLI %ld idle: stopping", (long)p->pid);
			proc_stop(p);
		} else if ((p->state == PROC_BOUND || p->state == PROC_WARM) &&
		    cf->max_instance_age_ms > 0 && now - p->started_at >=
		    (uint64_t)cf->max_instance_age_ms) {
			poold->stats.recycled++;
			proc_stop(p);
		}
	}
	/* Warm processes above min_instances (after set_limits) go, oldest first. */
	excess = pool_count(PROC_WARM, NULL) - (int)cf->min_instances;
	for (p = TAILQ_FIRST(&poold->procs); p != NULL && excess > 0;
	    p = TAILQ_NEXT(p, entry)) {
		if (p->state == PROC_WARM) {
			proc_stop(p);
			excess--;
		}
	}
	if (now - poold->last_health >= (uint64_t)cf->health_check_interval_ms) {
		poold->last_health = now;
		TAILQ_FOREACH(p, &poold->procs, entry) {
			char	st;

			if (p->state == PROC_DYING || p->reaped)
				continue;
			if (kill(p->pid, 0) == -1 && errno == ESRCH) {
				log_warnx("CLI %ld vanished", (long)p->pid);
				p->reaped = 1;
				proc_kill(p);
				continue;
			}
			/*
			 * An idle CLI that is stopped or a zombie will never
			 * answer: replace it.  A busy one is watched by the
			 * stall timeout instead.
			 */
			st = proc_sched_state(proc_cli_pid(p) != 0 ?
			    proc_cli_pid(p) : p->pid);
			if (p->job == NULL && (st == 'T' || st == 't' ||
			    st == 'Z' || st == 'X')) {
				log_warnx("CLI %ld is not runnable (state %c): "
				    "replacing it", (long)p->pid, st);
				poold->stats.unhealthy++;
				proc_kill(p);
			}
		}
	}
	if (poold->stopping) {
		int	busy = 0;

		TAILQ_FOREACH(p, &poold->procs, entry)
			busy += p->job != NULL;
		TAILQ_FOREACH(p, &poold->procs, entry) {
			if (now >= poold->stop_deadline)
				proc_kill(p);
			else if (p->job == NULL)
				proc_stop(p);
		}
		if (busy == 0 && poold->nprocs == 0)
			loop_stop(poold->loop);
		return;
	}
	pool_dispatch();
}

/* Return 1 if no job is queued or running. */
int
pool_idle(void)
{
	struct proc	*p;

	if (!TAILQ_EMPTY(&poold->queue))
		return (0);
	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->job != NULL)
			return (0);
	}
	return (1);
}

/* Begin shutdown: refuse queued jobs, let running ones finish (bounded). */
void
pool_shutdown(void)
{
	struct job	*job;

	if (poold->stopping)
		return;
	log_info("shutting down: %d CLI processes", poold->nprocs);
	poold->draining = 1;
	while ((job = TAILQ_FIRST(&poold->queue)) != NULL)
		pool_fail(job, PROTO_E_SHUTTING_DOWN, "the pool is stopping");
	poold->stopping = 1;
	poold->stop_deadline = poold_now() +
	    (uint64_t)poold->cf->shutdown_grace_ms;
	pool_tick(NULL);
}

/* Compare for qsort. */
static int
pool_cmp_u32(const void *a, const void *b)
{
	uint32_t	x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x < y ? -1 : x > y);
}

/* Percentiles 50, 95, 99 of a sample ring as a JSON object. */
static json_t *
pool_percentiles(const uint32_t *ring, uint64_t n)
{
	uint32_t	 sorted[POOLD_SAMPLES];
	size_t		 k = n < POOLD_SAMPLES ? (size_t)n : POOLD_SAMPLES;

	if (k == 0)
		return (json_pack("{s:n, s:n, s:n, s:I}", "p50", "p95", "p99",
		    "samples", (json_int_t)0));
	memcpy(sorted, ring, k * sizeof *sorted);
	qsort(sorted, k, sizeof *sorted, pool_cmp_u32);
	return (json_pack("{s:I, s:I, s:I, s:I}",
	    "p50", (json_int_t)sorted[(k - 1) * 50 / 100],
	    "p95", (json_int_t)sorted[(k - 1) * 95 / 100],
	    "p99", (json_int_t)sorted[(k - 1) * 99 / 100],
	    "samples", (json_int_t)k));
}

/* Build the answer to a stats control message. */
json_t *
pool_stats(void)
{
	struct poold_config	*cf = poold->cf;
	struct poold_stats	*st = &poold->stats;
	struct proc		*p;
	struct job		*job;
	json_t			*f, *procs, *one;
	uint64_t		 now = poold_now();
	pid_t			 cli;
	int			 qlen = 0, busy;
	static const char *const names[] = { "warm", "bound", "busy", "dying" };

	TAILQ_FOREACH(job, &poold->queue, entry)
		qlen++;
	if ((procs = json_array()) == NULL)
		return (NULL);
	TAILQ_FOREACH(p, &poold->procs, entry) {
		/* The CLI's pid: null until it runs in its sandbox. */
		cli = proc_cli_pid(p);
		one = json_pack("{s:o, s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:I, "
		    "s:I, s:I, s:b}",
		    "pid", cli != 0 ? json_integer(cli) : json_null(),
		    "sandbox_pid", (json_int_t)p->pid,
		    "state", names[p->state],
		    "tenant", p->tenant,
		    "conversation", p->conversation,
		    "session_id", p->session_id,
		    "model", p->profile.model,
		    "age_ms", (json_int_t)(now - p->started_at),
		    "idle_ms", (json_int_t)(p->job != NULL ? 0 :
		    now - p->last_used_at),
		    "turns", (json_int_t)p->turns,
		    "rss_kb", (json_int_t)proc_rss_kb(cli != 0 ? cli : p->pid),
		    "tools", p->profile.tools);
		if (one != NULL)
			json_array_append_new(procs, one);
	}
	busy = pool_count(PROC_BUSY, NULL);
	f = proto_new(PROTO_STATS);
	if (f == NULL) {
		json_decref(procs);
		return (NULL);
	}
	json_object_set_new(f, "uptime_ms",
	    json_integer((json_int_t)(now - st->started_at)));
	json_object_set_new(f, "draining", json_boolean(poold->draining));
	json_object_set_new(f, "limits", json_pack("{s:I, s:I, s:I, s:I, s:I, "
	    "s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
	    "min_instances", (json_int_t)cf->min_instances,
	    "min_warm", (json_int_t)cf->min_warm,
	    "max_instances", (json_int_t)cf->max_instances,
	    "tenant_max_jobs", (json_int_t)cf->tenant_max_jobs,
	    "key_max_jobs", (json_int_t)cf->key_max_jobs,
	    "tenant_max_processes", (json_int_t)cf->tenant_max_processes,
	    "queue_max", (json_int_t)cf->queue_max,
	    "queue_max_wait_ms", (json_int_t)cf->queue_max_wait_ms,
	    "job_timeout_ms", (json_int_t)cf->job_timeout_ms,
	    "first_event_timeout_ms", (json_int_t)cf->first_event_timeout_ms,
	    "stall_timeout_ms", (json_int_t)cf->stall_timeout_ms,
	    "idle_timeout_ms", (json_int_t)cf->idle_timeout_ms,
	    "max_messages_per_instance",
	    (json_int_t)cf->max_messages_per_instance,
	    "max_instance_age_ms", (json_int_t)cf->max_instance_age_ms));
	json_object_set_new(f, "totals", json_pack("{s:I, s:I, s:I, s:I, s:I, "
	    "s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
	    "jobs", (json_int_t)st->jobs,
	    "succeeded", (json_int_t)st->succeeded,
	    "failed", (json_int_t)st->failed,
	    "cancelled", (json_int_t)st->cancelled,
	    "busy", (json_int_t)st->busy,
	    "timeout", (json_int_t)st->timeouts,
	    "cli_failed", (json_int_t)st->cli_failed,
	    "upstream_error", (json_int_t)st->upstream_errors,
	    "resume_failed", (json_int_t)st->resume_failed,
	    "retried", (json_int_t)st->retried,
	    "spawned", (json_int_t)st->spawned,
	    "spawned_warm", (json_int_t)st->spawned_warm,
	    "spawn_failed", (json_int_t)st->spawn_failed,
	    "exited", (json_int_t)st->exited,
	    "recycled", (json_int_t)st->recycled,
	    "evicted", (json_int_t)st->evicted,
	    "stale_sessions", (json_int_t)st->stale_sessions,
	    "unhealthy", (json_int_t)st->unhealthy));
	json_object_set_new(f, "placed", json_pack("{s:I, s:I, s:I, s:I}",
	    "warm", (json_int_t)st->by_origin[ORIGIN_WARM],
	    "bound", (json_int_t)st->by_origin[ORIGIN_BOUND],
	    "spawned", (json_int_t)st->by_origin[ORIGIN_SPAWNED],
	    "resumed", (json_int_t)st->by_origin[ORIGIN_RESUMED]));
	json_object_set_new(f, "processes_by_state", json_pack("{s:i, s:i, "
	    "s:i, s:i, s:i}", "warm", pool_count(PROC_WARM, NULL),
	    "bound", pool_count(PROC_BOUND, NULL), "busy", busy,
	    "dying", pool_count(PROC_DYING, NULL), "total", poold->nprocs));
	json_object_set_new(f, "utilisation", json_real(cf->max_instances > 0 ?
	    (double)busy / (double)cf->max_instances : 0.0));
	json_object_set_new(f, "queue_length", json_integer(qlen));
	json_object_set_new(f, "upstream", upstream_stats());
	json_object_set_new(f, "queue_wait_ms",
	    pool_percentiles(st->qwait, st->nqwait));
	json_object_set_new(f, "time_to_first_event_ms",
	    pool_percentiles(st->ttfe, st->nttfe));
	json_object_set_new(f, "job_duration_ms",
	    pool_percentiles(st->dur, st->ndur));
	json_object_set_new(f, "daemon_overhead_us",
	    pool_percentiles(st->overhead, st->noverhead));
	json_object_set_new(f, "spawn_overhead_us",
	    pool_percentiles(st->spawn, st->nspawn));
	json_object_set_new(f, "processes", procs);
	json_object_set_new(f, "daemon_rss_kb",
	    json_integer(proc_rss_kb(getpid())));
	return (f);
}

/* Apply a set_limits control message (seed 000's initialize). */
int
pool_set_limits(json_t *msg, char **cause)
{
	struct poold_config	*cf = poold->cf;
	json_t			*mn = json_object_get(msg, "min_instances");
	json_t			*mx = json_object_get(msg, "max_instances");
	long			 min = cf->min_instances, max = cf->max_instances;

	if (mn != NULL) {
		if (!json_is_integer(mn))
			return (*cause = strdup("min_instances: not an integer"),
			    -1);
		min = (long)json_integer_value(mn);
	}
	if (mx != NULL) {
		if (!json_is_integer(mx))
			return (*cause = strdup("max_instances: not an integer"),
			    -1);
		max = (long)json_integer_value(mx);
	}
	if (max < 1 || max > 1024 || min < 0 || min > max)
		return (*cause = strdup("need 0 <= min_instances <= "
		    "max_instances, 1 <= max_instances <= 1024"), -1);
	cf->min_instances = min;
	cf->max_instances = max;
	log_info("limits set: min %ld, max %ld", min, max);
	/* Evict only the excess: stopping processes no longer count. */
	while (poold->nprocs - pool_count(PROC_DYING, NULL) >
	    cf->max_instances && pool_evict(NULL))
		;
	/* An operator's hand on the pool: try a refused account again. */
	upstream_probe_now("the pool's limits were set");
	pool_dispatch();
	return (0);
}

/* Apply a delete control message: a conversation's process and transcript. */
int
pool_delete(json_t *msg, char **cause)
{
	const char	*tenant, *sid, *conv;
	struct proc	*p;
	int		 n, live = 0;

	tenant = json_string_value(json_object_get(msg, "tenant"));
	sid = json_string_value(json_object_get(msg, "session_id"));
	conv = json_string_value(json_object_get(msg, "conversation"));
	if (!util_valid_tenant(tenant))
		return (*cause = strdup("tenant: missing or invalid"), -1);
	if (sid != NULL && !util_valid_uuid(sid))
		return (*cause = strdup("session_id: invalid"), -1);
	if (conv != NULL && !util_valid_uuid(conv))
		return (*cause = strdup("conversation: invalid"), -1);
	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (strcmp(p->tenant, tenant) != 0)
			continue;
		if ((conv != NULL && strcmp(p->conversation, conv) == 0) ||
		    (sid != NULL && strcmp(p->session_id, sid) == 0)) {
			if (p->job != NULL)
				pool_cancel(p->job);
			proc_kill(p);
			if (conv != NULL && strcmp(p->conversation, conv) == 0)
				live = p->delete_home = 1;
		}
	}
	if (conv == NULL)
		return (0);
	/*
	 * A CLI killed just now may write there until it is gone: its HOME
	 * is removed again then (pool_proc_gone).
	 */
	n = workspace_delete_home(poold->cf->state_dir, tenant, conv);
	if (n < 0 && !live)
		return (*cause = strdup("cannot remove the transcript"), -1);
	return (n < 0 ? 1 : n);
}
