"""Forms the buyer fills in, validated by WTForms with CSRF from Flask-WTF.

Labels and messages are translated when shown (`lazy_gettext`); WTForms' own messages ("Not a
valid choice.") follow the page's language too, from the catalog WTForms ships.
"""

from __future__ import annotations

import functools
from typing import Any

from babel.support import NullTranslations, Translations
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, RadioField, StringField
from wtforms.i18n import messages_path
from wtforms.validators import DataRequired, Email, Length, Optional


@functools.cache
def _wtforms_catalog(locale: str) -> NullTranslations:
    return Translations.load(messages_path(), [locale], domain="wtforms")


class WTFormsMessages:
    """WTForms' own messages in the page's language. Flask-WTF's (WTF_I18N_ENABLED) reads the
    catalog from disk again at every request, about 0.7 ms of each image page: this reads it once
    per language."""

    def gettext(self, string: str) -> str:
        """`string` in the page's language."""
        return _wtforms_catalog(str(get_locale() or "en")).ugettext(string)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """The form of `singular`/`plural` for `n`, in the page's language."""
        return _wtforms_catalog(str(get_locale() or "en")).ungettext(singular, plural, n)


MESSAGES = WTFormsMessages()


class BuyerForm(FlaskForm):
    """A buyer's form: CSRF from Flask-WTF, WTForms' messages in the page's language."""

    class Meta:
        def get_translations(self, form: Any) -> WTFormsMessages:
            return MESSAGES


class CheckoutForm(BuyerForm):
    """The Buy form of an image page."""

    attachment_id = HiddenField(validators=[DataRequired(message=_l("Choose an image."))])
    resolution = RadioField(
        _l("Resolution"),
        choices=["4x", "8x"],
        default="4x",
        validators=[DataRequired(message=_l("Choose a resolution."))],
    )
    email = EmailField(
        _l("Email for the download link (optional)"),
        validators=[
            Optional(),
            Length(max=254, message=_l("That email address is too long.")),
            Email(
                message=_l("That doesn't look like an email address."), check_deliverability=False
            ),
        ],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )


class ResendForm(BuyerForm):
    """A buyer asks for a fresh download link for one of their orders."""

    job_id = StringField(
        _l("Order number"),
        validators=[DataRequired(message=_l("Enter the order number.")), Length(max=255)],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )
    email = EmailField(
        _l("Email address used for the order"),
        validators=[
            DataRequired(message=_l("Enter the email address of the order.")),
            Length(max=254),
            Email(
                message=_l("That doesn't look like an email address."), check_deliverability=False
            ),
        ],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )


class MyOrdersForm(FlaskForm):
    """A buyer asks for a sign-in link to the orders placed with their email."""

    email = EmailField(
        _l("Email address you used for your orders"),
        validators=[
            DataRequired(message=_l("Enter your email address.")),
            Length(max=254, message=_l("That email address is too long.")),
            Email(
                message=_l("That doesn't look like an email address."),
                check_deliverability=False,
            ),
        ],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )


class ButtonForm(FlaskForm):
    """A form of one button (sign in, sign out): its CSRF token is all it carries."""


class FreshLinkForm(FlaskForm):
    """A signed-in buyer asks for a fresh download link for one of their orders."""

    job_id = HiddenField(validators=[DataRequired(), Length(max=255)])
