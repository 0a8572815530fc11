/*
 * Parser for the lines the claude CLI writes with
 * --output-format stream-json --verbose --include-partial-messages.
 * Each line is one JSON object; the parser reduces it to what a job needs.
 */
#ifndef CCGATE_CLI_H
#define CCGATE_CLI_H

#include <stddef.h>

#include <jansson.h>

#define CLI_MAX_LINE	(8 * 1024 * 1024)

enum cli_kind {
	CLI_OTHER,		/* anything we do not act on */
	CLI_INIT,		/* system/init: session id, model, tools */
	CLI_DELTA,		/* a text delta of the answer */
	CLI_TEXT_START,		/* a text block of the answer begins */
	CLI_RETRY,		/* system/api_retry: the upstream failed, retrying */
	CLI_MESSAGE_START,	/* an upstream answer begins: its input usage */
	CLI_STOP,		/* an upstream answer's stop_reason */
	CLI_TOOL_USE,		/* an answer's tool calls: json [{id,name,input}] */
	CLI_CONTROL,		/* an MCP message for our "sdk" server: json */
	CLI_RATE_LIMIT,		/* rate_limit_event: the plan's limit state */
	CLI_RESULT		/* the turn's end: usage, cost, error flag */
};

struct cli_msg {
	enum cli_kind	 kind;
	char		*text;		/* DELTA: the delta; RESULT: result */
	char		 session_id[37];	/* a UUID, or empty */
	char		 model[128];
	int		 ntools;	/* INIT: number of tools offered */
	int		 is_error;
	int		 error_status;	/* RETRY or RESULT: upstream status */
	long long	 retry_ms;	/* RETRY: the CLI's wait before it */
	int		 rejected;	/* RATE_LIMIT: status "rejected" */
	long long	 resets_at;	/* RATE_LIMIT: epoch seconds, or 0 */
	long long	 input_tokens;
	long long	 output_tokens;
	long long	 cache_read_tokens;
	long long	 cache_creation_tokens;
	double		 cost_usd;
	long long	 duration_ms;
	char		 subtype[64];
	char		 stop_reason[32];	/* STOP, RESULT; "" if none */
	char		*request_id;	/* CONTROL: what its answer names */
	json_t		*json;		/* TOOL_USE, CONTROL; RESULT: */
					/* its structured_output, if any */
};

int	cli_parse_line(const char *, size_t, struct cli_msg *, char **);
void	cli_msg_clear(struct cli_msg *);

#endif
