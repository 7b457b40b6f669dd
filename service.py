# placeholder: the service arrives with the serving issue
