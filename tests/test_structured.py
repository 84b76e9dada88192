"""Constrained output (edgerope.engine.constrain, llguidance): 20 JSON schemas on the two real
models, every output parsed and validated with `jsonschema`; GBNF grammars; bad schemas and
grammars as one-line errors before any token; output cut by max_tokens reported as such;
the CLI flags and the server's response_format."""
import json
import re

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from click.testing import CliRunner  # noqa: E402

from edgerope.cli import main  # noqa: E402
from edgerope.engine.generate import GenerationStats  # noqa: E402
from edgerope.errors import EdgeropeError, ParameterError  # noqa: E402
from edgerope.io.registry import load_any, locate  # noqa: E402

S = {"type": "string", "maxLength": 24}
SCHEMAS = [
    ("a lamp switched on", {"type": "object", "properties": {
        "device": {"enum": ["lamp", "fan", "heater"]}, "on": {"type": "boolean"}},
        "required": ["device", "on"], "additionalProperties": False}),
    ("a person", {"type": "object", "properties": {"name": S, "age": {
        "type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"],
        "additionalProperties": False}),
    ("a city and its population", {"type": "object", "properties": {
        "city": S, "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
        "required": ["city", "population"], "additionalProperties": False}),
    ("three colours", {"type": "object", "properties": {"colours": {
        "type": "array", "items": S, "minItems": 3, "maxItems": 3}},
        "required": ["colours"], "additionalProperties": False}),
    ("a temperature reading", {"type": "object", "properties": {
        "celsius": {"type": "number", "minimum": -50, "maximum": 60},
        "unit": {"const": "C"}}, "required": ["celsius", "unit"],
        "additionalProperties": False}),
    ("a book with optional subtitle", {"type": "object", "properties": {
        "title": S, "subtitle": S, "year": {"type": "integer", "minimum": 1400,
                                             "maximum": 2030}},
        "required": ["title", "year"], "additionalProperties": False}),
    ("a point", {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -100, "maximum": 100},
        "y": {"type": "integer", "minimum": -100, "maximum": 100}},
        "required": ["x", "y"], "additionalProperties": False}),
    ("a shopping list", {"type": "object", "properties": {"items": {
        "type": "array", "maxItems": 4, "items": {"type": "object", "properties": {
            "name": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["name", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False}),
    ("a weekday", {"type": "object", "properties": {"day": {"enum": [
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]}},
        "required": ["day"], "additionalProperties": False}),
    ("a yes or no answer", {"type": "object", "properties": {"answer": {"type": "boolean"},
                                                             "reason": S},
                            "required": ["answer"], "additionalProperties": False}),
    ("a nested address", {"type": "object", "properties": {"name": S, "address": {
        "type": "object", "properties": {"street": S, "zip": {
            "type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["street", "zip"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}),
    ("a list of numbers", {"type": "array", "items": {
        "type": "integer", "minimum": 0, "maximum": 999}, "minItems": 1, "maxItems": 5}),
    ("a rating", {"type": "object", "properties": {"stars": {
        "type": "integer", "minimum": 1, "maximum": 5}, "comment": S},
        "required": ["stars"], "additionalProperties": False}),
    ("a priority task", {"type": "object", "properties": {"task": S, "priority": {
        "enum": ["low", "medium", "high"]}, "done": {"type": "boolean"}},
        "required": ["task", "priority", "done"], "additionalProperties": False}),
    ("an RGB colour", {"type": "object", "properties": {c: {
        "type": "integer", "minimum": 0, "maximum": 255} for c in "rgb"},
        "required": list("rgb"), "additionalProperties": False}),
    ("a nullable field", {"type": "object", "properties": {"nickname": {
        "anyOf": [S, {"type": "null"}]}}, "required": ["nickname"],
        "additionalProperties": False}),
    ("a matrix", {"type": "object", "properties": {"rows": {"type": "array", "maxItems": 2,
        "minItems": 2, "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "integer", "minimum": 0, "maximum": 9}}}},
        "required": ["rows"], "additionalProperties": False}),
    ("a price", {"type": "object", "properties": {"amount": {
        "type": "number", "minimum": 0, "maximum": 10000}, "currency": {
        "enum": ["EUR", "USD", "GBP"]}}, "required": ["amount", "currency"],
        "additionalProperties": False}),
    ("a tagged event", {"type": "object", "properties": {"event": S, "tags": {
        "type": "array", "items": {"enum": ["home", "work", "fun"]}, "maxItems": 3}},
        "required": ["event", "tags"],
        "additionalProperties": False}),
    ("a sensor state", {"type": "object", "properties": {"sensor": {"enum": [
        "door", "window"]}, "state": {"enum": ["open", "closed"]}, "battery": {
        "type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["sensor", "state"], "additionalProperties": False}),
]


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2-135m"])
def model(request):
    try:
        locate(request.param)
    except EdgeropeError as e:
        pytest.skip(str(e))
    return load_any(request.param)


def test_twenty_schemas_parse_and_validate(model):
    assert len(SCHEMAS) == 20
    for i, (what, schema) in enumerate(SCHEMAS):
        st = GenerationStats()
        out = "".join(model.generate(f"Write {what} as JSON:\n", max_tokens=200,
                                     temperature=0.7, seed=i, json_schema=schema, stats=st))
        assert st.stop_reason == "stop" and not st.incomplete, (what, out, st.stop_reason)
        jsonschema.validate(json.loads(out), schema)


# bounded (at most 3 operators, 3 commands): the grammar ends, so every output must be whole
ARITH = 'root ::= term (op term)? (op term)? (op term)?\nop ::= "+" | "-" | "*" | "/"\n' \
        'term ::= [1-9] [0-9]? | "(" term op term ")"'
DSL = 'root ::= cmd (";" cmd)? (";" cmd)?\ncmd ::= ("on" | "off") " " dev\n' \
      'dev ::= "lamp" | "fan" | "tv"'
TERM = r"([1-9][0-9]?|\(.*\))"


@pytest.mark.parametrize("grammar,pattern", [
    (ARITH, rf"{TERM}([-+*/]{TERM}){{0,3}}"),
    (DSL, r"(on|off) (lamp|fan|tv)(;(on|off) (lamp|fan|tv)){0,2}"),
])
def test_gbnf_grammars(model, grammar, pattern):
    for seed in range(3):
        st = GenerationStats()
        out = "".join(model.generate("Answer: ", max_tokens=60, temperature=0.9, seed=seed,
                                     grammar=grammar, stats=st))
        assert not st.incomplete and re.fullmatch(pattern, out), (out, st.stop_reason)


def test_any_json_object(model):
    st = GenerationStats()
    out = "".join(model.generate("A JSON object for a red car:", max_tokens=120,
                                 temperature=0.5, seed=3, json_object=True, stats=st))
    if st.incomplete:  # an object may go on for ever; what came out is a prefix then
        assert st.stop_reason == "length" and out.startswith("{")
    else:
        assert isinstance(json.loads(out), dict)


@pytest.mark.parametrize("kw,msg", [
    (dict(json_schema={"type": "objekt"}), "json_schema:"),
    (dict(json_schema="{not json"), "json_schema: not valid JSON"),
    (dict(json_schema={"type": "array", "uniqueItems": True}), "uniqueItems"),
    (dict(grammar="root ::= undefined_rule"), "grammar:"),
    (dict(grammar="   "), "grammar:"),
    (dict(json_schema={"type": "object"}, grammar="root ::= \"a\""), "give one constraint"),
])
def test_bad_constraints_fail_before_any_token(model, kw, msg):
    stats = GenerationStats()
    with pytest.raises(ParameterError, match=msg) as e:
        "".join(model.generate("x", max_tokens=5, stats=stats, **kw))
    assert "\n" not in str(e.value) and stats.n_prompt == 0


def test_cut_by_max_tokens_says_so(model):
    st = GenerationStats()
    schema = SCHEMAS[3][1]
    out = "".join(model.generate("Three colours as JSON:", max_tokens=3, temperature=0,
                                 json_schema=schema, stats=st))
    assert st.stop_reason == "length" and st.incomplete and st.n_generated == 3
    with pytest.raises(ValueError):
        json.loads(out)


def test_cli_flags(tmp_path):
    try:
        locate("gemma3-270m")
    except EdgeropeError as e:
        pytest.skip(str(e))
    schema = SCHEMAS[0][1]
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(schema))
    r = CliRunner().invoke(main, ["generate", "-p", "Switch the lamp on:", "-n", "40",
                                  "--temp", "0", "-j", str(f), "-q"])
    assert r.exit_code == 0, r.output
    jsonschema.validate(json.loads(r.stdout.strip()), schema)
    r = CliRunner().invoke(main, ["generate", "-p", "x", "-n", "3", "-j",
                                  json.dumps(SCHEMAS[3][1]), "-q"])
    assert r.exit_code == 1 and "before it matched the JSON schema (raise -n)" in r.output
    r = CliRunner().invoke(main, ["generate", "-p", "x", "--grammar", "root ::= nope", "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("error: grammar:")
