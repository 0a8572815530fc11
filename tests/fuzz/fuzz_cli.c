/* libFuzzer target: the CLI stream-json line parser. */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cli.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Parse the input as one line. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cli_msg	 m;
	char		*cause = NULL;

	if (cli_parse_line((const char *)data, size, &m, &cause) == 0)
		cli_msg_clear(&m);
	free(cause);
	return (0);
}
