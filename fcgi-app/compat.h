/* Shared by the OpenAI and Anthropic dialects (compat.c). */
#ifndef CCGATE_COMPAT_H
#define CCGATE_COMPAT_H

#include <jansson.h>

#include "app.h"

struct compat_msgs {
	char		 *system;
	size_t		  n;
	const char	**roles;	/* "user" or "assistant" */
	char		**texts;
};

/*
 * Why a client's history was refused: the status (400, or 500 when
 * memory ran out) and what to tell the client.  The parsers need no
 * request, so a fuzz target drives them (tests/fuzz/fuzz_compat.c).
 */
struct compat_err {
	int	status;
	char	msg[256];
};

char	*compat_text(json_t *, const char *, size_t, struct compat_err *);
int	 compat_parse(json_t *, int, size_t, struct compat_msgs *,
	     struct compat_err *);
void	 compat_refuse(struct request *, const struct compat_err *);
void	 compat_free(struct compat_msgs *);
int	 compat_conversation(struct request *, const char *,
	     struct compat_msgs *, struct conversation *, int *);
void	 compat_ignored(struct request *, json_t *, const char *const *);
int	 compat_no_tools(struct request *, json_t *, const char *const *);
int	 compat_model(struct request *, json_t *, const char **);

#endif
