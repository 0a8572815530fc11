/*
 * Configuration files: one "key = value" a line, '#' starts a comment.
 * Both daemons read the same format; each names the keys it knows, so a
 * misspelt key is an error at start-up rather than a silent default.
 */
#ifndef CCGATE_CONF_H
#define CCGATE_CONF_H

#include <stddef.h>

#define CONF_MAX_LINE	4096
#define CONF_MAX_SIZE	(1024 * 1024)
#define CONF_MAX_KEY	64

struct conf_entry {
	char	*key;
	char	*value;
	int	 line;
};

struct conf {
	struct conf_entry	*entries;
	size_t			 n;
	char			*path;
};

struct conf	*conf_parse(const char *, size_t, const char *, char **);
struct conf	*conf_load(const char *, char **);
void		 conf_free(struct conf *);
const char	*conf_get(const struct conf *, const char *);
const char	*conf_str(const struct conf *, const char *, const char *);
int		 conf_long(const struct conf *, const char *, long, long, long,
		     long *, char **);
int		 conf_bool(const struct conf *, const char *, int, int *,
		     char **);
int		 conf_check(const struct conf *, const char *const *,
		     const char *const *, char **);

#endif
