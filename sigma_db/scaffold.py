"""``sigma-db new-product``: generate a product repository from ``templates/product``.

The template is a copier template shipped inside the wheel. Copier rather than cookiecutter:
the generated repo records its answers (``.copier-answers.yml``), so a product team can later
pull template improvements with ``copier update`` instead of diffing by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from sigma_db.errors import ConfigurationError
from sigma_db.topology import Product

__all__ = ["GeneratedProduct", "new_product", "template_path"]

_HINT = "pip install 'sigma-db[scaffold]'"
_EXAMPLES = {
    "lab": "Pack",
    "sim": "Scenario",
    "market": "Listing",
    "pilot": "Playbook",
    "platform": "Organization",
}
"""The example model each seed product gets; a new product gets ``Item``."""


@dataclass(frozen=True)
class GeneratedProduct:
    """What was generated and where."""

    product: Product
    destination: Path
    package: str


def template_path() -> Path:
    """Directory of the product template: packaged data in a wheel, ``templates/`` in a checkout."""
    packaged = files("sigma_db") / "templates" / "product"
    if packaged.is_dir():
        with as_file(packaged) as path:
            return Path(path)
    checkout = Path(__file__).resolve().parent.parent / "templates" / "product"
    if checkout.is_dir():
        return checkout
    raise ConfigurationError(  # pragma: no cover - a broken installation
        "The product template is missing from this sigma_db installation; reinstall sigma-db."
    )


def new_product(
    name: str,
    destination: Path,
    *,
    force: bool = False,
    sigma_db_requirement: str | None = None,
) -> GeneratedProduct:
    """Generate the repository of product ``name`` into ``destination``.

    ``sigma_db_requirement`` is what the generated ``pyproject.toml`` depends on (a version
    specifier, or a ``sigma-db @ file://…`` path when testing this working tree): a PEP 508
    requirement naming sigma-db.
    """
    product = Product.named(name)  # validates: lowercase identifier, not reserved, fits roles
    if destination.exists() and not destination.is_dir():
        raise ConfigurationError(f"--dest {destination} exists and is not a directory.")
    if destination.is_dir() and any(destination.iterdir()) and not force:
        raise ConfigurationError(
            f"--dest {destination} is not empty; choose an empty directory, or pass --force to "
            "write over files the template also has (other files are left alone)."
        )
    try:
        from copier import run_copy
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"new-product needs copier: {_HINT}") from exc
    other = _generated_product(destination)
    if other is not None and other != product.key:
        raise ConfigurationError(
            f"--dest {destination} holds the generated repository of product {other!r}; "
            f"--force only refreshes a product's own repository: generate {product.key!r} "
            "into another directory."
        )
    from sigma_db import __version__
    from sigma_db.migrations.commands import load_config, lock
    from sigma_db.migrations.layout import write_layout
    from sigma_db.naming import table_name_for

    package = f"{product.key}_service"
    example = _EXAMPLES.get(product.key, "Item")
    requirement = sigma_db_requirement or f"sigma-db>={__version__}"
    test_requirement = _with_extra(requirement, "test")
    data = {
        "product": product.key,
        "title": product.title,
        "database": product.database,
        "package": package,
        "example_class": example,
        "example_table": table_name_for(example),
        "sigma_db_requirement": requirement,
        "sigma_db_test_requirement": test_requirement,
    }
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"--dest {destination}: cannot create it ({exc.strerror or exc}); choose a "
            "directory you can create and write."
        ) from exc
    run_copy(
        str(template_path()),
        str(destination),
        data=data,
        defaults=True,
        overwrite=force,
        quiet=True,
        unsafe=False,
    )
    # One source for the migration files: the same writer `sigma-db` uses everywhere.
    alembic_ini = write_layout(
        destination, models_module=f"{package}.models", format_revisions=True, product=product.key
    )
    lock(load_config(alembic_ini))
    return GeneratedProduct(product, destination, package)


def _generated_product(destination: Path) -> str | None:
    """The product a previous ``new-product`` generated into ``destination``, if any."""
    import yaml  # copier's own dependency: it writes the answers file

    try:
        answers = yaml.safe_load((destination / ".copier-answers.yml").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    product = answers.get("product") if isinstance(answers, dict) else None
    return product if isinstance(product, str) else None


def _with_extra(requirement: str, extra: str) -> str:
    """Check ``requirement`` names sigma-db; return it with ``extra``: ``sigma-db[test]>=1``.

    Parsed with ``packaging`` (a dependency of copier, so present wherever ``new-product``
    runs) rather than edited as text: the value is written into ``pyproject.toml``, so anything
    but a requirement would make an invalid file, and extras or markers already there must be
    kept.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    example = "e.g. 'sigma-db>=0.1.0' or 'sigma-db @ git+https://git.example/sigma_db@v0.1.0'"
    if not requirement.isprintable():  # packaging lets a newline or NUL through in a URL
        raise ConfigurationError(
            "--sigma-db contains control characters or bytes that are not UTF-8; give one "
            f"requirement on one line, {example}."
        )
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigurationError(
            f"--sigma-db {requirement!r} is not a requirement ({reason}); give {example}."
        ) from None
    if canonicalize_name(parsed.name) != "sigma-db":
        raise ConfigurationError(
            f"--sigma-db {requirement!r} names {parsed.name!r}, not sigma-db; give {example}."
        )
    parsed.extras.add(extra)
    return str(parsed)
