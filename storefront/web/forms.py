"""Forms the buyer fills in, validated by WTForms with CSRF from Flask-WTF.

Labels and messages are translated when shown (`lazy_gettext`); WTForms' own messages follow
the page's language through Flask-WTF (WTF_I18N_ENABLED, on by default).
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, RadioField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional


class CheckoutForm(FlaskForm):
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


class ResendForm(FlaskForm):
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
