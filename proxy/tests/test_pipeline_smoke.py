from proxy.tests import fakes

HELLO = [{"role": "user", "content": "Hi"}]


def test_a_chat_completion_goes_through_the_whole_pipeline_in_process():
    rt = fakes.runtime()

    answer = fakes.call(
        rt, "POST", "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO}
    )

    assert answer.status == 200
    assert answer.json()["model"] == "gpt-test"
    assert rt.upstream.calls[0].body["model"] == "echo"
    (record,) = rt.writer.records
    assert (record.outcome, record.input_units, record.output_units) == ("ok", 3, 2)


def test_a_stream_goes_through_in_process():
    upstream = fakes.FakeUpstream(
        default=lambda call: fakes.FakeResponse(
            200, fakes.sse(fakes.chunk("Hel"), fakes.chunk("lo"))
        )
    )
    rt = fakes.runtime(upstream=upstream)

    answer = fakes.call(
        rt, "POST", "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert answer.status == 200
    assert answer.events[-1] == "[DONE]"
    assert rt.writer.records[0].stream is True
