"""Templates: definitions (data), the local repository of built images, builders."""

from vboxlab.templates.definition import Template, TemplateDefinition, load_template
from vboxlab.templates.repository import BuiltTemplate, TemplateRepository

__all__ = ["BuiltTemplate", "Template", "TemplateDefinition", "TemplateRepository",
           "load_template"]
