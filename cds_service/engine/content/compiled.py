"""Card templates rendered without Jinja's per-call overhead: the same output, byte for byte.

The content stays in ``cards/`` as Jinja templates; this module only changes how a compiled template
is run.  ``Template.render`` builds a fresh context from the environment's globals on every call (a
``ChainMap`` walked key by key): here the globals are merged once, when the template is compiled.
The smallest templates — text, ``{{ name }}`` and ``{% if name %}…{% elif name %}…{% else %}…{% endif %}``
only, such as the fact line — are run from their parsed form: the value of ``{{ name }}`` is
``str(finalize(value))`` and an ``if`` tests the value's truth, exactly as Jinja's generated code does.
Whenever such a template names a value it is not given, Jinja renders it (and says what is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from jinja2 import Template, nodes
from jinja2.sandbox import SandboxedEnvironment

#: One step of a simple template: ("text", str) | ("name", name) | ("if", ((name, steps), …), else-steps).
_Step = tuple[Any, ...]
_TEXT, _NAME, _IF = "text", "name", "if"
#: Names Jinja binds itself in some templates: never taken from the values here.
_JINJA_NAMES = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs"})


class _NotSimple(Exception):
    pass


def _steps(body: list[nodes.Node], names: set[str]) -> tuple[_Step, ...]:
    steps: list[_Step] = []
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    steps.append((_TEXT, child.data))
                else:
                    steps.append((_NAME, _name(child, names)))
        elif isinstance(node, nodes.If):
            branches = tuple((_name(branch.test, names), _steps(branch.body, names))
                             for branch in (node, *node.elif_))
            steps.append((_IF, branches, _steps(node.else_, names)))
        else:
            raise _NotSimple
    return tuple(steps)


def _name(node: nodes.Node, names: set[str]) -> str:
    if not isinstance(node, nodes.Name) or node.ctx != "load" or node.name in _JINJA_NAMES:
        raise _NotSimple
    names.add(node.name)
    return node.name


def _run(steps: tuple[_Step, ...], values: Mapping[str, Any], finalize: Callable[[Any], Any],
         out: list[str]) -> None:
    for step in steps:
        kind = step[0]
        if kind is _TEXT:
            out.append(step[1])
        elif kind is _NAME:
            out.append(str(finalize(values[step[1]])))
        else:
            for name, branch in step[1]:
                if values[name]:
                    _run(branch, values, finalize, out)
                    break
            else:
                _run(step[2], values, finalize, out)


def _identity(value: Any) -> Any:
    return value


class CardTemplate(Template):
    """A template of a ``CardEnvironment``: ``render_values(mapping)`` renders without copying the
    mapping twice; ``render(**values)`` is Jinja's, made faster the same way."""

    #: A simple template: its steps, the names they read, the environment's finalize; else None.
    _simple: tuple[tuple[_Step, ...], frozenset[str], Callable[[Any], Any]] | None = None

    def _prepare(self, environment: SandboxedEnvironment, source: str | nodes.Template) -> None:
        # The globals merged once: a card environment's globals are fixed when it is made.
        self.globals = dict(self.globals)
        finalize = environment.finalize
        if environment.is_async or environment.autoescape is not False \
                or getattr(finalize, "jinja_pass_arg", None) is not None:
            return
        tree = environment.parse(source) if isinstance(source, str) else source
        names: set[str] = set()
        try:
            steps = _steps(tree.body, names)
        except _NotSimple:
            return
        self._simple = (steps, frozenset(names), finalize or _identity)

    def render(self, *args: Any, **kwargs: Any) -> str:
        return self.render_values(dict(*args, **kwargs))

    def render_values(self, values: Mapping[str, Any]) -> str:
        """What ``render(**values)`` returns (or raises)."""
        simple = self._simple
        if simple is not None and values.keys() >= simple[1]:
            out: list[str] = []
            _run(simple[0], values, simple[2], out)
            return "".join(out)
        if self.environment.is_async:
            return super().render(values)
        try:
            return self.environment.concat(
                self.root_render_func(self.new_context({**self.globals, **values}, shared=True)))
        except Exception:
            self.environment.handle_exception()


class CardEnvironment(SandboxedEnvironment):
    """A sandboxed environment whose templates are ``CardTemplate``s."""

    template_class = CardTemplate

    def from_string(self, source: str | nodes.Template, globals: MutableMapping[str, Any] | None = None,
                    template_class: type[Template] | None = None) -> Template:
        template = super().from_string(source, globals, template_class)
        if isinstance(template, CardTemplate):
            template._prepare(self, source)
        return template


def render_values(template: Template, values: Mapping[str, Any]) -> str:
    """``template.render(**values)``, without Jinja's per-call overhead for a ``CardTemplate``."""
    if isinstance(template, CardTemplate):
        return template.render_values(values)
    return template.render(**values)
