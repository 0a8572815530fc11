/*
 * A chat turn and how a dialect answers it.  chat.c runs the turn (stores
 * the user's message, runs the job, stores the answer); the dialect's
 * turn_ops shape what the client sees: native (chat.c), OpenAI (openai.c),
 * Anthropic (anthropic.c).
 */
#ifndef CCGATE_TURN_H
#define CCGATE_TURN_H

#include <stdint.h>

#include <jansson.h>

#include "app.h"

struct turn;

struct turn_ops {
	/* A stream begins (headers are out): the dialect's opening events. */
	int	(*start)(struct turn *);
	/* One text delta of a stream. */
	int	(*delta)(struct turn *, const char *);
	/* The turn is done: send the answer (or the stream's last events). */
	void	(*done)(struct turn *);
	/* The turn failed after the stream began. */
	void	(*stream_error)(struct turn *, int, const char *, const char *);
};

struct turn {
	struct request		*r;
	const struct turn_ops	*ops;
	struct conversation	*conv;
	const char		*message;	/* what the user sent */
	const char		*send;		/* what the CLI is sent */
	long long		 max_tokens;
	int			 stream;
	int			 started;	/* ops->start has run */
	int			 resume;
	int			 prime;		/* new session from stored history */
	int			 include_usage;	/* OpenAI stream_options */
	json_t			*done;
	char			*partial;
	char			 code[32];
	char			 error[1024];
	const char		*missing;	/* the 404 text for a deleted conv */
	uint64_t		 started_ms;
	uint64_t		 job_us;	/* the job went to the pool */
	long long		 ttft_ms;
	long long		 created;	/* unix time, for the answer */
	/* The answer, once done. */
	const char		*text;
	const char		*session_id;
	long long		 in, out, cache_read, cache_creation;
	double			 cost;
};

void	chat_turn_run(struct turn *);
void	turn_init(struct turn *, struct request *, const struct turn_ops *,
	    struct conversation *, const char *, long long, int);

#endif
