/* Unit tests: configuration parsing. */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "util.h"
#include "unit.h"

static const char *const known[] = { "socket", "min_instances", "flag",
    NULL };
static const char *const prefixes[] = { "env.", NULL };

/* Parse text and return the error (NULL if it parsed). */
static char *
parse_error(const char *text)
{
	struct conf	*cf;
	char		*cause = NULL;

	cf = conf_parse(text, strlen(text), "t.conf", &cause);
	if (cf != NULL && conf_check(cf, known, prefixes, &cause) == 0) {
		conf_free(cf);
		return (NULL);
	}
	conf_free(cf);
	return (cause);
}

START_TEST(test_values)
{
	const char	*text = "# comment\n\n  socket =  /run/x.sock  \n"
	    "min_instances=3\nenv.ANTHROPIC_BASE_URL = http://h:1/a=b\n"
	    "flag = yes\r\n";
	struct conf	*cf;
	char		*cause = NULL;
	long		 n;
	int		 b;

	cf = conf_parse(text, strlen(text), "t.conf", &cause);
	ck_assert_ptr_nonnull(cf);
	ck_assert_int_eq(conf_check(cf, known, prefixes, &cause), 0);
	ck_assert_str_eq(conf_get(cf, "socket"), "/run/x.sock");
	ck_assert_str_eq(conf_get(cf, "env.ANTHROPIC_BASE_URL"),
	    "http://h:1/a=b");
	ck_assert_int_eq(conf_long(cf, "min_instances", 2, 0, 10, &n, &cause),
	    0);
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(conf_long(cf, "absent", 7, 0, 10, &n, &cause), 0);
	ck_assert_int_eq(n, 7);
	ck_assert_int_eq(conf_bool(cf, "flag", 0, &b, &cause), 0);
	ck_assert_int_eq(b, 1);
	ck_assert_str_eq(conf_str(cf, "absent", "def"), "def");
	conf_free(cf);
}
END_TEST

START_TEST(test_errors)
{
	char	*e;

	e = parse_error("socket /x\n");
	ck_assert_str_eq(e, "t.conf:1: expected key = value");
	free(e);
	e = parse_error("socket = a\nsocket = b\n");
	ck_assert_str_eq(e, "t.conf:2: duplicate key socket (first on line 1)");
	free(e);
	e = parse_error("\nsokcet = a\n");
	ck_assert_str_eq(e, "t.conf:2: unknown key sokcet");
	free(e);
	e = parse_error("bad key = 1\n");
	ck_assert_str_eq(e, "t.conf:1: invalid key \"bad key\"");
	free(e);
	{
		struct conf	*cf;

		cf = conf_parse("a\0b = 1\n", 8, "t.conf", &e);
		ck_assert_ptr_null(cf);
		ck_assert_str_eq(e, "t.conf:1: NUL byte");
		free(e);
	}
}
END_TEST

START_TEST(test_ranges)
{
	const char	*text = "min_instances = 99\nflag = maybe\nsocket = 1x\n";
	struct conf	*cf;
	char		*cause = NULL;
	long		 n;
	int		 b;

	cf = conf_parse(text, strlen(text), "t.conf", &cause);
	ck_assert_ptr_nonnull(cf);
	ck_assert_int_eq(conf_long(cf, "min_instances", 2, 0, 10, &n, &cause),
	    -1);
	ck_assert_str_eq(cause, "t.conf: min_instances: 99 is outside 0..10");
	free(cause);
	ck_assert_int_eq(conf_long(cf, "socket", 2, 0, 10, &n, &cause), -1);
	ck_assert_str_eq(cause, "t.conf: socket: not an integer: 1x");
	free(cause);
	ck_assert_int_eq(conf_bool(cf, "flag", 0, &b, &cause), -1);
	ck_assert_str_eq(cause, "t.conf: flag: not a boolean: maybe");
	free(cause);
	conf_free(cf);
}
END_TEST

START_TEST(test_line_limit)
{
	char	*text = malloc(CONF_MAX_LINE + 20), *e;

	memcpy(text, "socket = ", 9);
	memset(text + 9, 'a', CONF_MAX_LINE);
	text[9 + CONF_MAX_LINE] = '\0';
	e = parse_error(text);
	ck_assert_str_eq(e, "t.conf:1: line too long");
	free(e);
	free(text);
}
END_TEST

START_TEST(test_names)
{
	char	u[UUID_LEN + 1];

	ck_assert(util_valid_tenant("alice"));
	ck_assert(util_valid_tenant("key-abc.d@x_y"));
	ck_assert(!util_valid_tenant(""));
	ck_assert(!util_valid_tenant(".."));
	ck_assert(!util_valid_tenant(".hidden"));
	ck_assert(!util_valid_tenant("-rf"));
	ck_assert(!util_valid_tenant("a/b"));
	ck_assert(!util_valid_tenant("a b"));
	ck_assert(!util_valid_tenant("ä"));
	ck_assert(!util_valid_tenant(
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
	ck_assert_int_eq(util_uuid4(u), 0);
	ck_assert(util_valid_uuid(u));
	ck_assert_int_eq(u[14], '4');
	ck_assert(!util_valid_uuid("00000000-0000-4000-8000-00000000000"));
	ck_assert(!util_valid_uuid("00000000-0000-4000-8000-00000000000G"));
	ck_assert(!util_valid_uuid("00000000x0000-4000-8000-000000000000"));
	ck_assert(!util_valid_uuid(NULL));
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_values,
		test_errors,
		test_ranges,
		test_line_limit,
		test_names,
		NULL
	};

	return (unit_run("conf", "parse", tests));
}
