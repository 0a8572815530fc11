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

char	*compat_text(struct request *, json_t *, const char *);
int	 compat_parse(struct request *, json_t *, int, struct compat_msgs *);
void	 compat_free(struct compat_msgs *);
int	 compat_conversation(struct request *, const char *,
	     struct compat_msgs *, struct conversation *, int *);
void	 compat_ignored(struct request *, json_t *, const char *const *);
int	 compat_no_tools(struct request *, json_t *, const char *const *);
int	 compat_model(struct request *, json_t *, const char **);

#endif
