/* Unit tests: the CLI's stream-json lines, as the real CLI writes them. */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "unit.h"

/* Parse a line; fail the test on a parse error. */
static void
parse(const char *line, struct cli_msg *m)
{
	char	*cause = NULL;

	ck_assert_msg(cli_parse_line(line, strlen(line), m, &cause) == 0,
	    "%s", cause != NULL ? cause : "");
}

START_TEST(test_init)
{
	struct cli_msg	m;

	parse("{\"type\":\"system\",\"subtype\":\"init\",\"cwd\":\"/x\","
	    "\"session_id\":\"b336fb12-f0ce-4a61-8678-e60736e689a2\","
	    "\"tools\":[],\"model\":\"claude-sonnet-4-5\"}", &m);
	ck_assert_int_eq(m.kind, CLI_INIT);
	ck_assert_str_eq(m.session_id, "b336fb12-f0ce-4a61-8678-e60736e689a2");
	ck_assert_str_eq(m.model, "claude-sonnet-4-5");
	ck_assert_int_eq(m.ntools, 0);
	cli_msg_clear(&m);
}
END_TEST

START_TEST(test_delta)
{
	struct cli_msg	m;

	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
	    "\"text_delta\",\"text\":\" wor\\u00e9ld\\n\"}},\"session_id\":"
	    "\"b336fb12-f0ce-4a61-8678-e60736e689a2\"}", &m);
	ck_assert_int_eq(m.kind, CLI_DELTA);
	ck_assert_str_eq(m.text, " wor\xc3\xa9ld\n");
	cli_msg_clear(&m);
	/* A text block begins (a tool_use block does not count). */
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_start\",\"index\":0,\"content_block\":"
	    "{\"type\":\"text\",\"text\":\"\"}}}", &m);
	ck_assert_int_eq(m.kind, CLI_TEXT_START);
	cli_msg_clear(&m);
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_start\",\"index\":1,\"content_block\":"
	    "{\"type\":\"tool_use\",\"name\":\"Bash\"}}}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
	/* Other stream events and other delta types are not text. */
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_stop\"}}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_delta\",\"delta\":{\"type\":\"input_json_delta\","
	    "\"partial_json\":\"{\"}}}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
	    "\"text\":7}}}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
}
END_TEST

START_TEST(test_result)
{
	struct cli_msg	m;

	parse("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,"
	    "\"duration_ms\":77,\"result\":\"mock reply #1: hello there\","
	    "\"session_id\":\"b336fb12-f0ce-4a61-8678-e60736e689a2\","
	    "\"total_cost_usd\":0.012267,\"usage\":{\"input_tokens\":4064,"
	    "\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":2,"
	    "\"output_tokens\":5}}", &m);
	ck_assert_int_eq(m.kind, CLI_RESULT);
	ck_assert_int_eq(m.is_error, 0);
	ck_assert_int_eq(m.input_tokens, 4064);
	ck_assert_int_eq(m.output_tokens, 5);
	ck_assert_int_eq(m.cache_read_tokens, 2);
	ck_assert_int_eq(m.cache_creation_tokens, 3);
	ck_assert_double_eq_tol(m.cost_usd, 0.012267, 1e-9);
	ck_assert_int_eq(m.duration_ms, 77);
	ck_assert_str_eq(m.text, "mock reply #1: hello there");
	cli_msg_clear(&m);

	parse("{\"type\":\"result\",\"subtype\":\"error_during_execution\","
	    "\"is_error\":true,\"usage\":{\"input_tokens\":-5}}", &m);
	ck_assert_int_eq(m.kind, CLI_RESULT);
	ck_assert_int_eq(m.is_error, 1);
	ck_assert_int_eq(m.input_tokens, 0);
	ck_assert_str_eq(m.subtype, "error_during_execution");
	cli_msg_clear(&m);
}
END_TEST

/* An upstream answer's start (its input usage) and its stop_reason. */
START_TEST(test_message_start_and_stop)
{
	struct cli_msg	m;

	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":"
	    "{\"input_tokens\":4070,\"output_tokens\":1,"
	    "\"cache_creation_input_tokens\":9,\"cache_read_input_tokens\":"
	    "8}}}}", &m);
	ck_assert_int_eq(m.kind, CLI_MESSAGE_START);
	ck_assert_int_eq(m.input_tokens, 4070);
	ck_assert_int_eq(m.cache_read_tokens, 8);
	ck_assert_int_eq(m.cache_creation_tokens, 9);
	cli_msg_clear(&m);

	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\","
	    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":4}}}", &m);
	ck_assert_int_eq(m.kind, CLI_STOP);
	ck_assert_str_eq(m.stop_reason, "max_tokens");
	ck_assert_int_eq(m.output_tokens, 4);
	cli_msg_clear(&m);

	/* A message_delta without a stop_reason stops nothing. */
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"message_delta\",\"delta\":{\"stop_reason\":null}}}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);

	/* A message_start without usage: zeros. */
	parse("{\"type\":\"stream_event\",\"event\":{\"type\":"
	    "\"message_start\",\"message\":7}}", &m);
	ck_assert_int_eq(m.kind, CLI_MESSAGE_START);
	ck_assert_int_eq(m.input_tokens, 0);
	cli_msg_clear(&m);

	parse("{\"type\":\"result\",\"subtype\":\"error_during_execution\","
	    "\"is_error\":true,\"stop_reason\":\"max_tokens\"}", &m);
	ck_assert_int_eq(m.kind, CLI_RESULT);
	ck_assert_str_eq(m.stop_reason, "max_tokens");
	cli_msg_clear(&m);
}
END_TEST

START_TEST(test_retry_and_junk)
{
	struct cli_msg	 m;
	char		*cause = NULL;

	parse("{\"type\":\"system\",\"subtype\":\"api_retry\",\"attempt\":1,"
	    "\"error_status\":529}", &m);
	ck_assert_int_eq(m.kind, CLI_RETRY);
	ck_assert_int_eq(m.error_status, 529);
	cli_msg_clear(&m);
	/* A session id that is not 36 characters is not taken. */
	parse("{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":"
	    "\"b336fb12-f0ce-4a61-8678-e60736e689a2xxxx\"}", &m);
	ck_assert_str_eq(m.session_id, "");
	cli_msg_clear(&m);
	parse("{}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
	ck_assert_int_eq(cli_parse_line("not json", 8, &m, &cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "bad CLI line"));
	free(cause);
	cause = NULL;
	ck_assert_int_eq(cli_parse_line("[1]", 3, &m, &cause), -1);
	free(cause);
}
END_TEST

/* What the CLI (2.1.197) prints for a turn the upstream refused. */
START_TEST(test_upstream_errors)
{
	struct cli_msg	 m;

	parse("{\"type\":\"rate_limit_event\",\"rate_limit_info\":{"
	    "\"status\":\"rejected\",\"resetsAt\":1796029212,"
	    "\"rateLimitType\":\"five_hour\",\"isUsingOverage\":false},"
	    "\"session_id\":\"a3a5c23e-dcf2-4f26-b754-eb659be3d0aa\"}", &m);
	ck_assert_int_eq(m.kind, CLI_RATE_LIMIT);
	ck_assert_int_eq(m.rejected, 1);
	ck_assert_int_eq(m.resets_at, 1796029212LL);
	cli_msg_clear(&m);
	/* Allowed, or a reset of the wrong type: nothing to act on. */
	parse("{\"type\":\"rate_limit_event\",\"rate_limit_info\":{"
	    "\"status\":\"allowed\",\"resetsAt\":\"soon\"}}", &m);
	ck_assert_int_eq(m.kind, CLI_RATE_LIMIT);
	ck_assert_int_eq(m.rejected, 0);
	ck_assert_int_eq(m.resets_at, 0);
	cli_msg_clear(&m);
	parse("{\"type\":\"rate_limit_event\",\"rate_limit_info\":1}", &m);
	ck_assert_int_eq(m.kind, CLI_OTHER);
	cli_msg_clear(&m);
	parse("{\"type\":\"system\",\"subtype\":\"api_retry\",\"attempt\":1,"
	    "\"max_retries\":1,\"retry_delay_ms\":513.95,\"error_status\":"
	    "529,\"error\":\"overloaded\"}", &m);
	ck_assert_int_eq(m.kind, CLI_RETRY);
	ck_assert_int_eq(m.retry_ms, 513);
	cli_msg_clear(&m);
	parse("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":"
	    "true,\"api_error_status\":401,\"result\":\"Failed to "
	    "authenticate.\"}", &m);
	ck_assert_int_eq(m.kind, CLI_RESULT);
	ck_assert_int_eq(m.is_error, 1);
	ck_assert_int_eq(m.error_status, 401);
	cli_msg_clear(&m);
	/* A model's words: no status, whatever the text says. */
	parse("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":"
	    "false,\"api_error_status\":null,\"result\":\"API Error: 429 "
	    "usage limit\"}", &m);
	ck_assert_int_eq(m.is_error, 0);
	ck_assert_int_eq(m.error_status, 0);
	cli_msg_clear(&m);
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_init,
		test_delta,
		test_result,
		test_message_start_and_stop,
		test_retry_and_junk,
		test_upstream_errors,
		NULL
	};

	return (unit_run("cli", "lines", tests));
}
