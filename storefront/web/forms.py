"""Forms the buyer fills in, validated by WTForms with CSRF from Flask-WTF."""

from __future__ import annotations

from flask_babel import lazy_gettext
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, RadioField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional


class CheckoutForm(FlaskForm):
    """The Buy form of an image page."""

    attachment_id = HiddenField(validators=[DataRequired(message="Choose an image.")])
    resolution = RadioField(
        "Resolution",
        choices=["4x", "8x"],
        default="4x",
        validators=[DataRequired(message="Choose a resolution.")],
    )
    email = EmailField(
        "Email for the download link (optional)",
        validators=[
            Optional(),
            Length(max=254, message="That email address is too long."),
            Email(message="That doesn't look like an email address.", check_deliverability=False),
        ],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )


class ResendForm(FlaskForm):
    """A buyer asks for a fresh download link for one of their orders."""

    job_id = StringField(
        "Order number",
        validators=[DataRequired(message="Enter the order number."), Length(max=255)],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )
    email = EmailField(
        "Email address used for the order",
        validators=[
            DataRequired(message="Enter the email address of the order."),
            Length(max=254),
            Email(message="That doesn't look like an email address.", check_deliverability=False),
        ],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )


class MyOrdersForm(FlaskForm):
    """A buyer asks for a sign-in link to the orders placed with their email."""

    email = EmailField(
        lazy_gettext("Email address you used for your orders"),
        validators=[
            DataRequired(message=lazy_gettext("Enter your email address.")),
            Length(max=254, message=lazy_gettext("That email address is too long.")),
            Email(
                message=lazy_gettext("That doesn't look like an email address."),
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
