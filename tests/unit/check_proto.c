/* Unit tests: the job protocol's frame codec. */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto.h"
#include "unit.h"

/* Encode a message and decode it back through a reader. */
START_TEST(test_roundtrip)
{
	struct proto_reader	 r;
	json_t			*m, *out = NULL;
	uint8_t			*frame;
	size_t			 len;
	char			*cause = NULL;

	m = proto_new(PROTO_JOB);
	json_object_set_new(m, "message", json_string("héllo \u2603"));
	ck_assert_int_eq(proto_encode(m, PROTO_DEFAULT_MAX, &frame, &len,
	    &cause), 0);
	ck_assert_uint_eq(frame[0], 0);
	proto_reader_init(&r, PROTO_DEFAULT_MAX);
	/* Byte by byte: a frame split anywhere still decodes once. */
	for (size_t i = 0; i < len; i++) {
		ck_assert_int_eq(proto_reader_feed(&r, frame + i, 1), 0);
		if (i + 1 < len)
			ck_assert_int_eq(proto_reader_next(&r, &out, &cause), 0);
	}
	ck_assert_int_eq(proto_reader_next(&r, &out, &cause), 1);
	ck_assert_str_eq(proto_type(out), "job");
	ck_assert_str_eq(json_string_value(json_object_get(out, "message")),
	    "héllo \u2603");
	json_decref(out);
	ck_assert_int_eq(proto_reader_next(&r, &out, &cause), 0);
	ck_assert_ptr_null(out);
	json_decref(m);
	free(frame);
	proto_reader_free(&r);
}
END_TEST

/* Two frames in one read come out one after the other. */
START_TEST(test_two_frames)
{
	struct proto_reader	 r;
	json_t			*a = proto_new("ping"), *b = proto_new("stats");
	json_t			*out;
	uint8_t			*fa, *fb;
	size_t			 la, lb;
	char			*cause = NULL;

	ck_assert_int_eq(proto_encode(a, 4096, &fa, &la, &cause), 0);
	ck_assert_int_eq(proto_encode(b, 4096, &fb, &lb, &cause), 0);
	proto_reader_init(&r, 4096);
	ck_assert_int_eq(proto_reader_feed(&r, fa, la), 0);
	ck_assert_int_eq(proto_reader_feed(&r, fb, lb), 0);
	ck_assert_int_eq(proto_reader_next(&r, &out, &cause), 1);
	ck_assert_str_eq(proto_type(out), "ping");
	json_decref(out);
	ck_assert_int_eq(proto_reader_next(&r, &out, &cause), 1);
	ck_assert_str_eq(proto_type(out), "stats");
	json_decref(out);
	json_decref(a);
	json_decref(b);
	free(fa);
	free(fb);
	proto_reader_free(&r);
}
END_TEST

/* Decode raw bytes and return the error text (or NULL if it decoded). */
static char *
decode_error(const void *bytes, size_t n, size_t max)
{
	struct proto_reader	 r;
	json_t			*out = NULL;
	char			*cause = NULL;
	int			 rc;

	proto_reader_init(&r, max);
	if (proto_reader_feed(&r, bytes, n) != 0) {
		proto_reader_free(&r);
		return (strdup("feed refused"));
	}
	rc = proto_reader_next(&r, &out, &cause);
	json_decref(out);
	proto_reader_free(&r);
	if (rc == 1)
		return (NULL);
	return (cause != NULL ? cause : strdup("incomplete"));
}

/* The length is checked against the limit before any body byte. */
START_TEST(test_limits_and_malformed)
{
	char	*e;

	e = decode_error("\x00\x10\x00\x01", 4, 4096);
	ck_assert_str_eq(e, "frame length 1048577 outside 1..4096");
	free(e);
	e = decode_error("\x00\x00\x00\x00", 4, 4096);
	ck_assert_str_eq(e, "frame length 0 outside 1..4096");
	free(e);
	e = decode_error("\x00\x00\x00\x02{]", 6, 4096);
	ck_assert_ptr_nonnull(strstr(e, "invalid JSON"));
	free(e);
	e = decode_error("\x00\x00\x00\x02[]", 6, 4096);
	ck_assert_str_eq(e, "frame is not a JSON object");
	free(e);
	e = decode_error("\x00\x00\x00\x0e{\"type\":\"job\"}", 18, 4096);
	ck_assert_str_eq(e, "unsupported protocol version");
	free(e);
	e = decode_error("\x00\x00\x00\x07{\"v\":1}", 11, 4096);
	ck_assert_str_eq(e, "frame has no type");
	free(e);
	e = decode_error("\x00\x00\x00\x14{\"v\":2,\"type\":\"job\"}", 24, 4096);
	ck_assert_str_eq(e, "unsupported protocol version");
	free(e);
	e = decode_error("\x00\x00\x00\x1b{\"v\":1,\"type\":1,\"type\":\"x\"}",
	    31, 4096);
	ck_assert_ptr_nonnull(strstr(e, "invalid JSON"));
	free(e);
	/* A reader never buffers more than one maximal frame. */
	{
		struct proto_reader	r;
		char			big[PROTO_MIN_MAX * 2];

		memset(big, 'x', sizeof big);
		proto_reader_init(&r, PROTO_MIN_MAX);
		ck_assert_int_eq(proto_reader_feed(&r, big, sizeof big), -1);
		proto_reader_free(&r);
	}
}
END_TEST

/* proto_encode refuses a body over the limit. */
START_TEST(test_encode_limit)
{
	json_t	*m = proto_new(PROTO_JOB);
	char	 text[5000], *cause = NULL;
	uint8_t	*frame;
	size_t	 len;

	memset(text, 'a', sizeof text - 1);
	text[sizeof text - 1] = '\0';
	json_object_set_new(m, "message", json_string(text));
	ck_assert_int_eq(proto_encode(m, 4096, &frame, &len, &cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "exceeds 4096"));
	free(cause);
	json_decref(m);
}
END_TEST

/* Blocking helpers over a socket pair. */
START_TEST(test_fd_helpers)
{
	int	 sv[2];
	json_t	*m = proto_new(PROTO_STATS), *out;
	char	*cause = NULL;

	ck_assert_int_eq(pipe(sv), 0);
	ck_assert_int_eq(proto_write_fd(sv[1], m, 4096, &cause), 0);
	out = proto_read_fd(sv[0], 4096, 1000, &cause);
	ck_assert_ptr_nonnull(out);
	ck_assert_str_eq(proto_type(out), "stats");
	json_decref(out);
	out = proto_read_fd(sv[0], 4096, 50, &cause);
	ck_assert_ptr_null(out);
	ck_assert_str_eq(cause, "timed out");
	free(cause);
	close(sv[0]);
	close(sv[1]);
	json_decref(m);
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_roundtrip,
		test_two_frames,
		test_limits_and_malformed,
		test_encode_limit,
		test_fd_helpers,
		NULL
	};

	return (unit_run("proto", "codec", tests));
}
