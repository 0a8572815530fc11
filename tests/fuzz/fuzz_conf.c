/*
 * libFuzzer target: the configuration parser and its typed getters, as
 * both daemons use them on every key of a file.
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "conf.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const known[] = { "listen", "threads", "verbose",
	    NULL };
	struct conf	*cf;
	char		*cause = NULL;
	long		 n;
	int		 b;
	size_t		 i;

	if ((cf = conf_parse((const char *)data, size, "fuzz", &cause)) ==
	    NULL) {
		if (cause == NULL)
			abort();	/* every refusal says why */
		free(cause);
		return (0);
	}
	for (i = 0; i < cf->n; i++) {
		if (conf_get(cf, cf->entries[i].key) == NULL)
			abort();
		if (conf_long(cf, cf->entries[i].key, 0, -1000, 1000, &n,
		    &cause) == 0 && (n < -1000 || n > 1000))
			abort();
		free(cause);
		cause = NULL;
		(void)conf_bool(cf, cf->entries[i].key, 0, &b, &cause);
		free(cause);
		cause = NULL;
	}
	(void)conf_check(cf, known, NULL, &cause);
	free(cause);
	conf_free(cf);
	return (0);
}
