/* libFuzzer target: the job-protocol frame decoder. */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "proto.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Feed the input in two pieces and take every frame out of it. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_reader	 r;
	json_t			*out;
	char			*cause = NULL;
	size_t			 half = size / 2;

	proto_reader_init(&r, 4096);
	if (proto_reader_feed(&r, data, half) == 0 &&
	    proto_reader_feed(&r, data + half, size - half) == 0) {
		while (proto_reader_next(&r, &out, &cause) == 1)
			json_decref(out);
	}
	free(cause);
	proto_reader_free(&r);
	return (0);
}
